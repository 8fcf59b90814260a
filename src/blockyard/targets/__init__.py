"""Export targets: how a backend's volume is offered to an initiator (iSCSI via tgt, NBD via
qemu-nbd, local paths). Drivers compose one target with their storage."""
