"""The noise generators: known-answer tests and native-vs-reference streams."""

import pytest
import torch

from modelsec_fast import reference
from tests.ops.conftest import requires_native


def _words(*vals):
    return torch.tensor(vals, dtype=torch.int64).reshape(-1, 1)


@pytest.mark.parametrize("counter, key, expected", [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_reference_philox_matches_random123_known_answers(counter, key, expected):
    out = reference.philox4x32_10(_words(*counter), key).flatten().tolist()
    assert out == list(expected)


def test_reference_chacha20_matches_rfc8439_block_vector():
    key = [int.from_bytes(bytes(range(4 * i, 4 * i + 4)), "little") for i in range(8)]
    out = reference.chacha20_block(key, _words(1, 0x09000000, 0x4A000000, 0)).flatten().tolist()
    expected = [0xE4E7F110, 0x15593BD1, 0x1FDD0F50, 0xC47120A3, 0xC7F4D1C7, 0x0368C033,
                0x9AAA2204, 0x4E6CD4C3, 0x466482D2, 0x09AA9F07, 0x05D7C214, 0xA2028BD9,
                0xD19C12B5, 0xB94E16DE, 0xE883D0CB, 0x4E3C50A2]
    assert out == expected


def test_reference_normals_are_bounded_and_finite():
    z = reference.philox_normal(1 << 16, seed=99, offset=0, tensor_index=0)
    assert torch.isfinite(z).all() and z.abs().max() <= 6.77


@requires_native
@pytest.mark.parametrize("numel, seed, offset, index", [
    (1, 0, 0, 0), (7, 1, 3, 1), (4099, -5, 2**40, 7), (70001, 2**62 + 11, 123456789, 2**31 + 5),
])
def test_native_philox_stream_matches_reference(numel, seed, offset, index):
    out = torch.empty(numel)
    torch.ops.modelsec_fast._fill_normals_(out, seed, offset, index, 0, [])
    ref = reference.philox_normal(numel, seed, offset, index)
    # Same uniforms; log and sincos differ by a few fp32 ulp.
    torch.testing.assert_close(out, ref, rtol=2e-6, atol=2e-6)


@requires_native
@pytest.mark.parametrize("numel, index", [(5, 0), (4096 + 3, 2)])
def test_native_chacha20_stream_matches_reference(numel, index):
    key = reference.secure_key()
    out = torch.empty(numel)
    torch.ops.modelsec_fast._fill_normals_(out, 0, 0, index, 1, key)
    torch.testing.assert_close(out, reference.chacha20_normal(numel, key, index), rtol=4e-6, atol=4e-6)


@requires_native
@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_every_cpu_instruction_set_draws_the_same_stream(isa, tmp_path):
    """Each compiled variant (forced by MODELSEC_FAST_CPU_ISA) matches the reference."""
    import subprocess
    import sys
    code = ("import torch, modelsec_fast as m; from modelsec_fast import reference as R;"
            "m.ops.native_available(); o = torch.empty(999);"
            "torch.ops.modelsec_fast._fill_normals_(o, 42, 5, 1, 0, []);"
            "torch.testing.assert_close(o, R.philox_normal(999, 42, 5, 1), rtol=2e-6, atol=2e-6);"
            "print(m._native.build_info()['cpu_isa'])")
    env = dict(__import__("os").environ, MODELSEC_FAST_CPU_ISA=isa)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
