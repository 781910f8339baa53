"""The mycoedge application: lifecycle, config, HTTP API, MQTT hub, store, trust and sync."""

__version__ = "0.1.0"
