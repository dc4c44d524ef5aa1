"""Bad audio and bad codes get a clear error before any compute."""
import numpy as np
import pytest

from mufm.codec.tokenizer import BadAudioError, check_codes, check_waveform


def test_good_waveform_passes_as_float32():
    out = check_waveform(np.zeros((2, 480), np.float64), sample_rate=24000)
    assert out.dtype == np.float32 and out.shape == (2, 480)


@pytest.mark.parametrize("wave,kw,needle", [
    (np.zeros((1, 480), np.float32), dict(sample_rate=44100), "44100 Hz"),
    (np.zeros((480,), np.float32), {}, "[batch, samples]"),
    (np.zeros((1, 480, 2), np.float32), {}, "downmix"),
    (np.zeros((1, 0), np.float32), {}, "empty"),
    (np.zeros((1, 480), np.int16), {}, "int16"),
    (np.array([["a", "b"]]), {}, "numeric"),
])
def test_bad_waveforms_are_named(wave, kw, needle):
    with pytest.raises(BadAudioError, match=None) as e:
        check_waveform(wave, **kw)
    assert needle in str(e.value)


def test_nan_and_inf_samples_are_counted_with_their_rows():
    wave = np.zeros((3, 100), np.float32)
    wave[1, 5] = np.nan
    wave[2, 7] = np.inf
    with pytest.raises(BadAudioError, match=r"2 NaN/Inf samples \(batch rows \[1, 2\]\)"):
        check_waveform(wave)


@pytest.mark.parametrize("codes,needle", [
    (np.zeros((1, 5, 3), np.float32), "integers"),
    (np.zeros((5, 3), np.int32), "[batch, frames, levels]"),
    (np.zeros((1, 5, 13), np.int32), "13 levels"),
    (np.full((1, 5, 2), 1024, np.int32), "[0, 1024)"),
    (np.full((1, 5, 2), -1, np.int32), "[0, 1024)"),
])
def test_bad_codes_are_named(codes, needle):
    with pytest.raises(BadAudioError) as e:
        check_codes(codes, num_levels=12, codebook_size=1024)
    assert needle in str(e.value)
    assert check_codes(np.ones((1, 5, 12), np.int64), num_levels=12, codebook_size=1024).dtype == np.int32


def test_waveform_errors_come_from_the_one_waveform_check():
    # The tokenizer raises what mufm.audio.decode.waveform_problem (the data builders'
    # check too) finds, so the two cannot drift apart; only silence is left to encode.
    from mufm.audio.decode import waveform_problem

    wave = np.zeros((1, 480), np.int16)
    with pytest.raises(BadAudioError) as e:
        check_waveform(wave)
    assert str(e.value) == str(waveform_problem(wave, batched=True))
    assert str(e.value).startswith("integer_pcm: ")
    assert check_waveform(np.zeros((1, 480), np.float32)).shape == (1, 480)
