"""geolocsft core: the contract shared by trainer, converter, engine and app."""

__version__ = "0.1.0"
