"""Exports through a target, for drivers whose volumes are paths (files, block devices).

A driver mixes in `TargetExports`, says where a volume lives (`export_path`) and is given a
`Target`; the export half of the driver contract is then the target's, with the export
persisted in the volume's provider_location (addressing, allowed connectors: JSON) and
provider_auth (the secrets: JSON), never anywhere else. Only this module decodes them: the
service asks the driver (`export_of`) what an export still allows.
"""

from __future__ import annotations

import json

from blockyard.errors import BackendError
from blockyard.model import ConnectionInfo, Connector, Export, ModelUpdate, Target, VolumeRef


def load_export(volume: VolumeRef) -> Export | None:
    """The export persisted with `volume`, if any."""
    if not volume.provider_location or not volume.provider_location.startswith("{"):
        return None
    raw = json.loads(volume.provider_location)
    raw["secrets"] = json.loads(volume.provider_auth) if volume.provider_auth else {}
    return Export.from_json(raw)


def store_export(export: Export) -> ModelUpdate:
    """What to persist for `export`: secrets apart from the rest."""
    public = export.to_json()
    secrets = public.pop("secrets")
    return ModelUpdate(provider_location=json.dumps(public, sort_keys=True),
                       provider_auth=json.dumps(secrets, sort_keys=True))


class TargetExports:
    """The export methods of the driver contract, carried out by `self.target`."""

    target: Target

    def export_path(self, volume: VolumeRef) -> str:
        raise NotImplementedError

    def validate_connector(self, connector: Connector) -> None:
        self.target.validate_connector(connector)

    def create_export(self, volume: VolumeRef, connector: Connector) -> ModelUpdate | None:
        """All the export work for one connector, once (the target is idempotent)."""
        export = self.target.export(volume, self.export_path(volume), connector,
                                    load_export(volume))
        return store_export(export)

    def ensure_export(self, volume: VolumeRef) -> ModelUpdate | None:
        export = load_export(volume)
        if export is None:
            return None
        return store_export(self.target.ensure(volume, self.export_path(volume), export))

    def remove_export(self, volume: VolumeRef) -> None:
        export = load_export(volume)
        if export is not None:
            self.target.remove(volume, export)

    def export_of(self, volume: VolumeRef) -> Export | None:
        return load_export(volume)

    def initialize_connection(self, volume: VolumeRef, connector: Connector) -> ConnectionInfo:
        """Only formats the persisted export: no side effects, any number of calls."""
        export = load_export(volume)
        if export is None:
            raise BackendError(f"Volume {volume.id} is not exported; create_export first.")
        return self.target.connection_info(volume, export, connector)

    def terminate_connection(self, volume: VolumeRef, connector: Connector | None,
                             force: bool = False) -> ModelUpdate | None:
        export = load_export(volume)
        if export is None:
            return None
        return store_export(self.target.unexport(volume, export, connector))
