"""The codec as a tool: `python -m mufm.codec {train,encode,decode,roundtrip,evaluate}`."""
