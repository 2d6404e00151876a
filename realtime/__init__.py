"""Real-time talking-avatar server.

Read in this order to follow one audio chunk to one video frame:
``ingest`` -> ``features`` -> ``generator`` (with ``model`` and ``sampling``) -> ``motion``
-> ``renderer`` -> ``tracks``. ``session`` wires them for one peer; ``app`` serves them.
"""

__version__ = "0.1.0"
