"""The sweep that wires it all: read the Hub, gather the signals, decide once, act, then
report (status, notifications) and remember what the next sweep needs."""
