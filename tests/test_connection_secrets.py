"""Connection secrets (CHAP credentials, cephx keys, NBD TLS keys) are in the answer of a
call that attaches, and masked in every later view of the attachment."""

from __future__ import annotations

import json
from typing import Any

from blockyard.api.attachments import attachment_detail
from blockyard.db.models import Attachment
from blockyard.model import IscsiInfo, NbdInfo, RbdInfo, parse
from blockyard.service.attachments import MASK, attachment_connection_info, masked

CHAP = IscsiInfo(target_iqn="iqn.2010-10.org.openstack:volume-1", target_portal="10.0.0.1:3260",
                 target_lun=1, volume_id="v1", auth_method="CHAP",
                 auth_username="chap-user-0123456789", auth_password="chap-secret-abcdef")
CEPH = RbdInfo(pool="volumes", image="volume-1", monitors=(("10.0.0.2", 6789),),
               auth_username="blockyard", key="AQBcephxkeybase64secret==", volume_id="v1")
NBD = NbdInfo(export_name="volume-1", host="10.0.0.3", port=10809, tls=True,
              tls_psk_identity="blockyard", tls_psk_key="00112233445566778899aabbccddeeff")
SECRETS = ("chap-user-0123456789", "chap-secret-abcdef", "AQBcephxkeybase64secret==",
           "00112233445566778899aabbccddeeff")


def _attachment(info: Any) -> Attachment:
    return Attachment(id="a1", volume_id="v1", project_id="p", instance_uuid=None,
                      attach_status="attached", attach_mode="rw",
                      connection_info=attachment_connection_info(info, "a1"))


def test_views_mask_every_secret_and_keep_the_rest() -> None:
    for info in (CHAP, CEPH, NBD):
        shown = attachment_detail(_attachment(info))
        text = json.dumps(shown)
        assert not [s for s in SECRETS if s in text], text
        flat = dict(shown["connection_info"])
        assert flat["driver_volume_type"] == info.protocol
        # what is left still describes the connection (enough to find and disconnect it)
        parsed = parse({"driver_volume_type": flat.pop("driver_volume_type"),
                        "data": {k: v for k, v in flat.items() if k != "attachment_id"}})
        assert parsed.volume_id == info.volume_id or info is NBD


def test_the_answer_of_an_attach_keeps_them() -> None:
    shown = attachment_detail(_attachment(CHAP), secrets=True)
    assert shown["connection_info"]["auth_password"] == "chap-secret-abcdef"


def test_masked_handles_the_nested_form() -> None:
    wire = CEPH.to_wire()
    out = masked(wire)
    assert out["data"]["key"] == MASK and out["data"]["keyring"] == MASK
    assert out["data"]["name"] == "volumes/volume-1"
    assert wire["data"]["key"] == "AQBcephxkeybase64secret=="  # the input is left alone
