"""QoS specs: named sets of limits that volume types point at (``volume_types.qos_specs_id``).

A spec set is associated with a type by setting the type's `qos_specs_id`; a type has at most
one, as in Cinder. Blockyard's backends do not enforce these limits yet; the specs are stored
and reported so that clients and Nova (front-end consumers) see what Cinder would show.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from blockyard.db.models import QosSpecs, VolumeType, utcnow
from blockyard.errors import Conflict, InUse, Invalid, NotFound
from blockyard.service import listing
from blockyard.service.runtime import Runtime

CONSUMERS = ("front-end", "back-end", "both")
SORTABLE = {"id": "id", "name": "name", "consumer": "consumer", "created_at": "created_at"}
FILTERABLE = {"id", "name", "consumer"}


def check_consumer(consumer: str) -> None:
    if consumer not in CONSUMERS:
        raise Invalid(f"Invalid qos specs: Valid consumer of QoS specs are: "
                      f"{list(CONSUMERS)}")


def _get(session: Session, specs_id: str) -> QosSpecs:
    qos = session.get(QosSpecs, specs_id)
    if qos is None:
        raise NotFound("QoSSpecs", specs_id, f"No such QoS spec {specs_id}.")
    return qos


def _type(session: Session, type_id: str) -> VolumeType:
    vt = session.get(VolumeType, type_id)
    if vt is None:
        raise NotFound("VolumeType", type_id, f"Volume type {type_id} could not be found.")
    return vt


def get(rt: Runtime, specs_id: str) -> QosSpecs:
    with rt.db.read() as s:
        return _get(s, specs_id)


def list_specs(rt: Runtime, params: listing.ListParams, filters: dict[str, str]) -> listing.Page:
    query = select(QosSpecs)
    for column, value in filters.items():
        query = query.where(getattr(QosSpecs, column) == value)
    with rt.db.read() as s:
        return listing.paginate(s, QosSpecs, query, params, sortable=SORTABLE)


def create(rt: Runtime, name: str, consumer: str, specs: dict[str, str]) -> QosSpecs:
    check_consumer(consumer)
    conflict = Conflict(f"QoS Specs {name} already exists.")
    try:
        with rt.db.write() as s:
            if s.execute(select(QosSpecs.id).where(QosSpecs.name == name)).first():
                raise conflict
            qos = QosSpecs(id=str(uuid.uuid4()), name=name, consumer=consumer,
                           specs=dict(specs), created_at=utcnow())
            s.add(qos)
            s.flush()
    except IntegrityError:
        raise conflict from None
    return qos


def set_keys(rt: Runtime, specs_id: str, specs: dict[str, str]) -> None:
    """Create or overwrite keys; the key `consumer` changes the consumer, as in Cinder."""
    values = dict(specs)
    consumer = values.pop("consumer", None)
    if consumer is not None:
        check_consumer(consumer)
    with rt.db.write() as s:
        qos = _get(s, specs_id)
        if consumer is not None:
            qos.consumer = consumer
        qos.specs = {**qos.specs, **values}  # a new dict: JSON columns track assignment only
        qos.updated_at = utcnow()


def delete_keys(rt: Runtime, specs_id: str, keys: list[str]) -> None:
    """Remove every key in `keys`, or none of them when one is missing."""
    with rt.db.write() as s:
        qos = _get(s, specs_id)
        for key in keys:
            if key not in qos.specs:
                raise NotFound("QoSSpecsKey", key,
                               f"QoS spec {specs_id} has no spec with key {key}.")
        qos.specs = {k: v for k, v in qos.specs.items() if k not in keys}
        qos.updated_at = utcnow()


def delete(rt: Runtime, specs_id: str, force: bool) -> None:
    """Refused while types point at the specs, unless `force` (which disassociates them)."""
    with rt.db.write() as s:
        qos = _get(s, specs_id)
        associated = s.execute(
            select(VolumeType.id).where(VolumeType.qos_specs_id == specs_id)
        ).first()
        if associated and not force:
            raise InUse("Qos specs still in use.")
        _disassociate_all(s, specs_id)
        s.delete(qos)


def associations(rt: Runtime, specs_id: str) -> list[tuple[str, str]]:
    """(type id, type name) of every type using the specs."""
    with rt.db.read() as s:
        _get(s, specs_id)
        rows = s.execute(
            select(VolumeType.id, VolumeType.name).where(VolumeType.qos_specs_id == specs_id)
            .order_by(VolumeType.name)
        ).all()
        return [(r[0], r[1]) for r in rows]


def associate(rt: Runtime, specs_id: str, type_id: str) -> None:
    with rt.db.write() as s:
        _get(s, specs_id)
        vt = _type(s, type_id)
        if vt.qos_specs_id is not None and vt.qos_specs_id != specs_id:
            raise Invalid(f"Invalid volume type: Type {type_id} is already associated with "
                          f"another qos specs: {vt.qos_specs_id}")
        vt.qos_specs_id = specs_id
        vt.updated_at = utcnow()


def disassociate(rt: Runtime, specs_id: str, type_id: str) -> None:
    with rt.db.write() as s:
        _get(s, specs_id)
        vt = _type(s, type_id)
        if vt.qos_specs_id == specs_id:
            vt.qos_specs_id = None
            vt.updated_at = utcnow()


def _disassociate_all(session: Session, specs_id: str) -> None:
    session.execute(
        update(VolumeType).where(VolumeType.qos_specs_id == specs_id)
        .values(qos_specs_id=None, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def disassociate_all(rt: Runtime, specs_id: str) -> None:
    with rt.db.write() as s:
        _get(s, specs_id)
        _disassociate_all(s, specs_id)
