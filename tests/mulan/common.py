"""Tiny MuLan configs shared by the tests (1 s windows, a 1-layer random text encoder)."""
from mufm.mulan.audio import AudioTowerConfig
from mufm.mulan.model import MuLanConfig
from mufm.mulan.text import MiniLMConfig, TextTowerConfig

U = 2.0 ** -24  # fp32 unit roundoff
AUDIO = AudioTowerConfig(window_seconds=1.0, hop_seconds=0.5, min_seconds=0.5, n_mels=16,
                         subsample_channels=4, d_model=16, num_layers=1, num_heads=2, d_ff=32,
                         conv_kernel=3, relpos_num_buckets=8, relpos_max_distance=16)
MINILM = MiniLMConfig(d_model=16, num_layers=1, num_heads=2, d_ff=32, num_positions=64,
                      max_length=64)
TEXT = TextTowerConfig(minilm=MINILM, frozen=True, pretrained=False)
MODEL = MuLanConfig(audio=AUDIO, text=TEXT)
