"""Consul's HTTP API over the one Waypost model: requests read the way Consul reads them,
answers shaped exactly as Consul's (``mapping``), served under ``/v1/`` by
``waypost.api.consul``."""
