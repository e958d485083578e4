"""The host side of the agent contract: run settings, plan building, result checking, the agent bundle,
and the transports (local and SSH) that carry a plan to a device and bring its result back.

Used by a plain `edgekit run` on this machine as much as by the fleet runner (`edgekit.fleet`).
"""
