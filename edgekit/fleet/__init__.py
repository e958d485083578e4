"""A fleet of devices: the inventory (fleet files, `~/.ssh/config` aliases) and the fan-out runner.

The transports that reach one device, and the agent contract they carry, are `edgekit.device`."""
