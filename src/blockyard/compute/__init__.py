"""The compute agent: the Nova side of blockyard, hot-plugging volumes into running QEMU guests."""
