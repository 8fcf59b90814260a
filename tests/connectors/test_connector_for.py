"""`connector_for` dispatches on the protocol tag of a typed info or a wire dict."""

from __future__ import annotations

from blockyard.connectors import IscsiConnector, LocalConnector, NbdConnector, connector_for
from blockyard.model import NbdInfo

ISCSI = {"target_iqn": "iqn.2010-10.org.x:v1", "target_portal": "10.0.0.1:3260",
         "target_lun": 1, "volume_id": "v1", "access_mode": "rw"}


def test_dispatch_on_the_tag() -> None:
    assert isinstance(connector_for({"driver_volume_type": "iscsi", "data": ISCSI}), IscsiConnector)
    assert isinstance(connector_for(NbdInfo("e", socket="/s")), NbdConnector)
    assert isinstance(connector_for({"driver_volume_type": "local",
                                     "data": {"device_path": "/x"}}), LocalConnector)
