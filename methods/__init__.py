"""Acceleration methods: one module each, registered with diffrepro.methods.register_method."""
