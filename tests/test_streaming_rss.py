"""Streaming: reading every byte of a >= 1 GB checkpoint costs about one tensor of memory."""

from __future__ import annotations

import shutil
import textwrap

import numpy as np
import pytest

from phi_quant.model.safetensors_io import read_header
from phi_quant.testing.factory import make_large_checkpoint
from phi_quant.testing.rss import run_with_peak_rss

RSS_LIMIT = 400 * 2**20

_READ_ALL = """
import numpy as np
from phi_quant.model.source import open_model
total, nbytes, biggest = 0, 0, 0
with open_model({path!r}) as src:
    for t in src.tensors({split}):
        flat = t.raw().reshape(-1)
        for start in range(0, flat.size, 1 << 22):  # touch every element
            total += int(flat[start:start + (1 << 22)].sum(dtype=np.uint64))
        nbytes += flat.nbytes
        biggest = max(biggest, flat.nbytes)
        del flat
print(nbytes, total, biggest)
"""


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    path = tmp_path_factory.mktemp("large-ckpt")
    make_large_checkpoint(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _checksum(path) -> tuple[int, int]:
    """Sum of every stored 16-bit word, read straight from the files (independent of ModelSource)."""
    total = nbytes = 0
    for f in sorted(path.glob("*.safetensors")):
        for e in read_header(f).entries.values():
            with open(f, "rb") as fh:
                fh.seek(e.offset)
                left = e.nbytes
                while left:
                    chunk = np.frombuffer(fh.read(min(left, 1 << 23)), np.uint16)
                    total += int(chunk.sum(dtype=np.uint64))
                    left -= chunk.nbytes
            nbytes += e.nbytes
    return nbytes, total


@pytest.mark.parametrize("split", ["split=False", "split=True"])
def test_reading_every_tensor_of_1gb_stays_under_400mb(large, split):
    result = run_with_peak_rss(textwrap.dedent(_READ_ALL.format(path=str(large), split=split)), timeout=300)
    assert result.returncode == 0, result.output
    nbytes, total, biggest = (int(x) for x in result.output.split())
    print(f"{split}: read {nbytes / 1e9:.2f} GB, largest tensor {biggest / 2**20:.0f} MiB, "
          f"peak RSS {result.peak_rss / 2**20:.0f} MiB")
    assert nbytes >= 1_100_000_000
    assert result.peak_rss < RSS_LIMIT
    if split == "split=False":
        assert (nbytes, total) == _checksum(large)  # every byte really was read, and read right


_EMBED = """
import numpy as np
from phi_quant.model.source import open_model
with open_model({path!r}) as src:
    t = src.tensor("embed")
    blocks = [t.raw()] if {whole} else (b for _, b in t.row_blocks(256))
    total = 0
    for b in blocks:
        total += int(b.sum(dtype=np.uint64))  # touch every page
        del b
print(t.nbytes, total)
"""


def test_row_blocks_keep_one_block_resident(large):
    """Reading the 131 MB embedding by row blocks costs about one block; through raw(), the tensor."""
    whole = run_with_peak_rss(textwrap.dedent(_EMBED.format(path=str(large), whole=True)), timeout=300)
    blocks = run_with_peak_rss(textwrap.dedent(_EMBED.format(path=str(large), whole=False)), timeout=300)
    assert whole.returncode == 0 and blocks.returncode == 0, whole.output + blocks.output
    assert whole.output == blocks.output  # same bytes
    nbytes = int(whole.output.split()[0])
    print(f"raw(): {whole.peak_rss / 2**20:.0f} MiB, row_blocks: {blocks.peak_rss / 2**20:.0f} MiB")
    assert blocks.peak_rss < whole.peak_rss - 0.8 * nbytes


def test_the_measurement_can_fail(large):
    """Keeping every tensor alive must blow the limit: the RSS number is real, not a constant."""
    code = _READ_ALL.format(path=str(large), split="").replace("        del flat\n", "        keep.append(flat)\n")
    code = "keep = []\n" + code
    result = run_with_peak_rss(textwrap.dedent(code), timeout=300)
    assert result.returncode == 0, result.output
    assert result.peak_rss > 1_000_000_000


def test_peak_rss_is_the_childs_own():
    """A parent holding 300 MB must not inflate the child's figure (vfork + exec carries the parent's
    high-water mark into ru_maxrss on Linux); the child's own allocation must show up."""
    ballast = np.ones(300 * 2**20 // 8)
    small = run_with_peak_rss("print('hi')")
    big = run_with_peak_rss("import numpy as np\na = np.ones(200 * 2**20 // 8)\nprint(a.sum())")
    assert small.returncode == 0 and small.output.strip() == "hi"
    assert small.peak_rss < 100 * 2**20 < 200 * 2**20 < big.peak_rss < 300 * 2**20
    assert run_with_peak_rss("import sys; sys.exit(4)").returncode == 4
    del ballast


def test_reading_a_1gb_mixture_of_experts_costs_one_expert_not_the_layer():
    """16 experts x 2 layers (1.11 GB): each expert's w1/w2/w3 streams on its own, so peak RSS stays
    where the dense checkpoint's does (the checkpoint is the kit's, generated once per machine)."""
    from phi_quant.model.source import open_model
    from phi_quant.testing.kit_streaming import large_moe_checkpoint

    path = large_moe_checkpoint(16)
    with open_model(path) as src:
        assert src.config.num_experts == 16 and src.total_bytes >= 1_100_000_000
        experts = [i for i in src.tensor_infos() if i.expert is not None]
        assert len(experts) == 3 * 16 * src.config.num_layers and max(i.nbytes for i in experts) == 8 * 2**20
    result = run_with_peak_rss(textwrap.dedent(_READ_ALL.format(path=str(path), split="")), timeout=300)
    assert result.returncode == 0, result.output
    nbytes, _, biggest = (int(x) for x in result.output.split())
    print(f"MoE: read {nbytes / 1e9:.2f} GB, largest tensor {biggest / 2**20:.0f} MiB, peak RSS {result.peak_rss / 2**20:.0f} MiB")
    assert nbytes >= 1_100_000_000 and result.peak_rss < RSS_LIMIT
