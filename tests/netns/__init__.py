"""Test hosts: network namespaces joined by an emulated wide-area network (see `hosts`)."""
