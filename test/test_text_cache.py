"""TextEmbeddingCache: incremental encoding, disk persistence, fingerprint isolation, corruption recovery, speed."""
import hashlib
import logging
import time

import pytest
import torch

from ovs_ros.templates import TEMPLATES
from ovs_ros.text_cache import TextEmbeddingCache, VocabularyEmbeddings
from ovs_ros.vocabulary import Vocabulary

D = 32


class FakeEncoder:
    """Deterministic hash-based 'text tower' that records every sentence it is asked to encode."""

    def __init__(self, dim=D, scale=3.0):
        self.dim = dim
        self.scale = scale
        self.calls = []

    def expected(self, sentence):
        seed = int.from_bytes(hashlib.sha256(sentence.encode()).digest()[:8], "little")
        v = torch.randn(self.dim, generator=torch.Generator().manual_seed(seed)) * self.scale
        return v / v.norm()

    def __call__(self, sentences):
        self.calls.append(list(sentences))
        return torch.stack([self.expected(s) * self.scale for s in sentences])  # un-normalised on purpose

    @property
    def sentences(self):
        return [s for c in self.calls for s in c]


def vocab(n, prefix="class", syn=2):
    return Vocabulary.from_strings([",".join(f"{prefix}{i}_{j}" for j in range(syn)) for i in range(n)])


def check_values(enc, v, out, template_set):
    templates = TEMPLATES[template_set]
    assert isinstance(out, VocabularyEmbeddings)
    assert out.text_embeddings.shape == (len(v.phrases), len(templates), enc.dim)
    assert out.text_embeddings.dtype == torch.float32
    assert out.synonym_class_index.tolist() == v.synonym_class_index.tolist()
    assert out.num_classes == len(v) and out.template_set == template_set
    expected = torch.stack([torch.stack([enc.expected(t.format(p)) for t in templates]) for p in v.phrases])
    torch.testing.assert_close(out.text_embeddings, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.text_embeddings.norm(dim=-1), torch.ones(len(v.phrases), len(templates)))


def test_encodes_only_new_phrases():
    enc = FakeEncoder()
    cache = TextEmbeddingCache(enc, "fp-a", chunk_size=50)
    v1 = vocab(20)  # 40 phrases
    out1 = cache.embed(v1, "t14")
    check_values(enc, v1, out1, "t14")
    assert len(enc.sentences) == 40 * 14 and max(len(c) for c in enc.calls) <= 50
    # 90% shared: 18 old classes + 2 new ones
    v2 = Vocabulary.from_strings([",".join(v1.names[i]) for i in range(2, 20)] + ["new0,new0b", "new1,new1b"])
    enc.calls.clear()
    out2 = cache.embed(v2, "t14")
    check_values(enc, v2, out2, "t14")
    assert sorted(enc.sentences) == sorted(t.format(p) for p in ["new0", "new0b", "new1", "new1b"]
                                           for t in TEMPLATES["t14"])
    enc.calls.clear()
    cache.embed(v1, "t14")
    assert enc.sentences == []
    st = cache.stats
    assert st["sentences_encoded"] == 44 * 14 and st["phrases_encoded"] == 44
    assert st["memory_hits"] == 36 + 40 and st["disk_hits"] == 0
    # another template set is a separate cache
    out = cache.embed(v1, "t1")
    check_values(enc, v1, out, "t1")
    assert len(enc.sentences) == 40


def test_shared_phrase_across_classes():
    enc = FakeEncoder()
    v = Vocabulary.from_strings(["wall,walls", "stone wall,wall"])
    out = TextEmbeddingCache(enc, "fp").embed(v, "t1")
    check_values(enc, v, out, "t1")
    assert len(enc.sentences) == 3  # "wall" encoded once


def test_disk_cache_survives_new_instance(tmp_path):
    enc = FakeEncoder()
    v = vocab(30)
    TextEmbeddingCache(enc, "f" * 64, cache_dir=tmp_path).embed(v, "t14")
    files = list(tmp_path.rglob("*.safetensors"))
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["f" * 16 + "/t14.safetensors"]
    assert not list(tmp_path.rglob("*.tmp"))
    enc2 = FakeEncoder()
    cache2 = TextEmbeddingCache(enc2, "f" * 64, cache_dir=tmp_path)
    out = cache2.embed(v, "t14")
    assert enc2.sentences == [] and cache2.stats["sentences_encoded"] == 0 and cache2.stats["disk_hits"] == 60
    check_values(enc, v, out, "t14")
    # appending: a new instance adds phrases to the same file, a third one sees both
    v2 = vocab(5, prefix="other")
    TextEmbeddingCache(FakeEncoder(), "f" * 64, cache_dir=tmp_path).embed(v2, "t14")
    enc3 = FakeEncoder()
    cache3 = TextEmbeddingCache(enc3, "f" * 64, cache_dir=tmp_path)
    cache3.embed(v, "t14")
    check_values(enc, v2, cache3.embed(v2, "t14"), "t14")
    assert enc3.sentences == []


def test_concurrent_writers_merge(tmp_path):
    enc = FakeEncoder()
    a = TextEmbeddingCache(enc, "fp-merge", cache_dir=tmp_path)
    b = TextEmbeddingCache(enc, "fp-merge", cache_dir=tmp_path)
    a.embed(vocab(3, "a"), "t1")
    b.embed(vocab(3, "b"), "t1")  # b's write must keep a's phrases
    c_enc = FakeEncoder()
    c = TextEmbeddingCache(c_enc, "fp-merge", cache_dir=tmp_path)
    c.embed(vocab(3, "a"), "t1")
    c.embed(vocab(3, "b"), "t1")
    assert c_enc.sentences == []


def test_different_fingerprint_never_reused(tmp_path):
    v = vocab(4)
    TextEmbeddingCache(FakeEncoder(), "model-A", cache_dir=tmp_path).embed(v, "t1")
    enc = FakeEncoder(scale=5.0)
    cache = TextEmbeddingCache(enc, "model-B", cache_dir=tmp_path)
    cache.embed(v, "t1")
    assert len(enc.sentences) == 8
    # same 16-character prefix, different full fingerprint: the file is detected as foreign, not reused
    p1, p2 = "0123456789abcdef-one", "0123456789abcdef-two"
    TextEmbeddingCache(FakeEncoder(), p1, cache_dir=tmp_path).embed(v, "t1")
    enc2 = FakeEncoder()
    c2 = TextEmbeddingCache(enc2, p2, cache_dir=tmp_path)
    assert c2.model_dir == TextEmbeddingCache(FakeEncoder(), p1, cache_dir=tmp_path).model_dir
    c2.embed(v, "t1")
    assert len(enc2.sentences) == 8 and c2.stats["disk_files_discarded"] == 1
    # a fingerprint that is not path-safe gets a hashed directory
    odd = TextEmbeddingCache(FakeEncoder(), "../../etc/passwd", cache_dir=tmp_path)
    assert odd.model_dir.parent == tmp_path and len(odd.model_dir.name) == 16


def _corruptions():
    def flip_payload(b):
        b = bytearray(b)
        b[-5] ^= 0xFF
        return bytes(b)

    def bad_header(b):
        return b"\xff" * 8 + b[8:]

    def garbage_json(b):
        b = bytearray(b)
        b[9] = ord("!")
        return bytes(b)

    return {
        "truncated": lambda b: b[: len(b) // 2],
        "tiny": lambda b: b[:5],
        "empty": lambda b: b"",
        "bad_header_length": bad_header,
        "garbage_json": garbage_json,
        "payload_bit_flip": flip_payload,
    }


@pytest.mark.parametrize("kind", sorted(_corruptions()))
def test_corrupt_file_detected_and_rebuilt(tmp_path, kind, caplog):
    v = vocab(6)
    enc = FakeEncoder()
    cache = TextEmbeddingCache(enc, "fp-corrupt", cache_dir=tmp_path)
    cache.embed(v, "t14")
    path = cache.cache_file("t14")
    path.write_bytes(_corruptions()[kind](path.read_bytes()))
    enc2 = FakeEncoder()
    cache2 = TextEmbeddingCache(enc2, "fp-corrupt", cache_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="ovs_ros.text_cache"):
        out = cache2.embed(v, "t14")
    assert "discarded" in caplog.text
    assert len(enc2.sentences) == 12 * 14 and cache2.stats["disk_files_discarded"] == 1
    check_values(enc, v, out, "t14")
    enc3 = FakeEncoder()  # the rebuilt file is valid again
    check_values(enc, v, TextEmbeddingCache(enc3, "fp-corrupt", cache_dir=tmp_path).embed(v, "t14"), "t14")
    assert enc3.sentences == []


def test_shape_mismatch_detected(tmp_path):
    """A well-formed file whose tensor does not match its phrase list (e.g. edited by hand) is rejected."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    v = vocab(3)
    cache = TextEmbeddingCache(FakeEncoder(), "fp-shape", cache_dir=tmp_path)
    cache.embed(v, "t1")
    path = cache.cache_file("t1")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        emb = f.get_tensor("embeddings")
    save_file({"embeddings": emb[:-1].contiguous()}, str(path), metadata=meta)
    enc = FakeEncoder()
    cache2 = TextEmbeddingCache(enc, "fp-shape", cache_dir=tmp_path)
    check_values(enc, v, cache2.embed(v, "t1"), "t1")
    assert len(enc.sentences) == 6 and cache2.stats["disk_files_discarded"] == 1


def test_unwritable_cache_dir_degrades_to_memory(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    enc = FakeEncoder()
    cache = TextEmbeddingCache(enc, "fp-ro", cache_dir=blocker)  # mkdir under a file fails with OSError
    v = vocab(2)
    with caplog.at_level(logging.WARNING, logger="ovs_ros.text_cache"):
        check_values(enc, v, cache.embed(v, "t1"), "t1")
    assert "not written" in caplog.text
    cache.embed(v, "t1")
    assert len(enc.sentences) == 4


def test_encode_fn_validation():
    cache = TextEmbeddingCache(lambda s: torch.zeros(len(s) + 1, D), "fp")
    with pytest.raises(ValueError, match="encode_fn returned"):
        cache.embed(vocab(2), "t1")
    with pytest.raises(KeyError, match="unknown template set"):
        TextEmbeddingCache(FakeEncoder(), "fp").embed(vocab(2), "t3")
    with pytest.raises(ValueError, match="fingerprint"):
        TextEmbeddingCache(FakeEncoder(), "")


@pytest.mark.parametrize("assembled_lru", [0, 2])
def test_warm_switch_is_fast(capsys, assembled_lru):
    """150 classes x 14 templates (2-3 synonyms each) at D=768: switch from memory, with the assembled-result LRU
    (switching back costs no copy) and without it (one dict walk + one index_select)."""
    enc_fast = lambda s: torch.randn(len(s), 768)  # noqa: E731 (cold encoding speed is not under test)
    cache = TextEmbeddingCache(enc_fast, "fp-speed", assembled_lru=assembled_lru)
    va = Vocabulary.from_strings([f"a{i},a{i}s,a{i}x" for i in range(150)])
    vb = Vocabulary.from_strings([f"a{i},a{i}s" for i in range(75, 225)])
    cache.embed(va, "t14")
    cache.embed(vb, "t14")
    times = []
    for _ in range(20):
        for v in (va, vb):
            t0 = time.perf_counter()
            out = cache.embed(v, "t14")
            times.append(time.perf_counter() - t0)
    assert out.text_embeddings.shape == (300, 14, 768)
    best, median = min(times) * 1e3, sorted(times)[len(times) // 2] * 1e3
    with capsys.disabled():
        print(f"\n[timing] warm vocabulary switch, assembled_lru={assembled_lru} "
              f"(150 classes, 300-450 phrases x 14 x 768): "
              f"best {best:.2f} ms, median {median:.2f} ms")
    assert best < 5.0  # the bar (issue 5): warm switch <= 5 ms from memory; best-of-40 is robust to a loaded CI box
    assert median < 50


def test_assembled_lru_returns_same_values():
    enc = FakeEncoder()
    cache = TextEmbeddingCache(enc, "fp-lru", assembled_lru=1)
    va, vb = vocab(3, "a"), vocab(3, "b")
    first = cache.embed(va, "t14")
    again = cache.embed(Vocabulary.from_strings([",".join(n) for n in va.names]), "t14")  # equal, not identical
    assert again.text_embeddings is first.text_embeddings
    cache.embed(vb, "t14")  # evicts va
    check_values(enc, va, cache.embed(va, "t14"), "t14")
    assert len(enc.sentences) == 12 * 14
