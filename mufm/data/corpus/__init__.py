"""The embedded corpus: music21 scores rendered with fluidsynth, captioned from the score.

CLI: ``python -m mufm.data.corpus build --config=quick|medium|full --out=DIR``. Reading a built
corpus (`manifest.read_manifest`) needs neither music21 nor TensorFlow.
"""
