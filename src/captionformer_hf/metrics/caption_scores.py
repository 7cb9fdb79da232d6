"""Caption metrics for CapA: CIDEr-D (native), METEOR and SPICE (pycocoevalcap's Java tools).

Every metric here scores a *list of (reference, candidate) pairs*, one reference per candidate, on raw strings (no
tokenisation), exactly as the published CHOTA evaluator calls pycocoevalcap: ``{i: [gt]}`` / ``{i: [pred]}``.
Each pair's score depends only on the pair (and, for CIDEr-D, on the document frequencies of the whole list), so
every unique pair is scored once and weighted by its multiplicity: in videos, the same (GT, prediction) caption
pair repeats on every frame of a matched track.

No torch or evaluate import here.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import shutil
import subprocess
import threading
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

SUPPORTED_CAPTION_METRICS = ("cider", "meteor", "spice")


class CaptionMetricUnavailableError(RuntimeError):
    """A chosen caption metric cannot run here (Java or its jars are missing)."""


# ---------------------------------------------------------------------------------------------------------- CIDEr-D
def _ngrams(sentence: str, n: int = 4) -> Counter:
    """pycocoevalcap ``precook``: whitespace split, 1..n-gram counts."""
    words = sentence.split()
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


def cider_d_pair_scores(
    references: Sequence[str],
    candidates: Sequence[str],
    multiplicities: Sequence[int] | None = None,
    n: int = 4,
    sigma: float = 6.0,
) -> np.ndarray:
    """CIDEr-D of each (reference, candidate) pair, identical to pycocoevalcap's ``Cider().compute_score`` on
    ``{i: [ref_i]}, {i: [cand_i]}`` where pair i occurs ``multiplicities[i]`` times in the corpus (document
    frequencies and the corpus size count every occurrence). Scores are on pycocoevalcap's ×10 scale.

    pycocoevalcap's quirks are kept: the length used by the Gaussian length penalty counts *bigrams*, idf is
    ``log(N) - log(max(1, df))``, candidate weights are clipped by the reference's. Returns an empty-corpus
    sentinel of zeros where pycocoevalcap raises (no reference has any n-gram)."""
    if len(references) != len(candidates):
        raise ValueError(f"got {len(references)} references but {len(candidates)} candidates")
    if multiplicities is None:
        multiplicities = [1] * len(references)
    num_pairs = int(sum(multiplicities))
    scores = np.zeros(len(references), dtype=np.float64)
    if num_pairs == 0:
        return scores
    cooked: dict[str, Counter] = {}
    for sentence in (*references, *candidates):
        if sentence not in cooked:
            cooked[sentence] = _ngrams(sentence, n)
    document_frequency: defaultdict = defaultdict(float)
    for reference, count in zip(references, multiplicities):
        for ngram in cooked[reference]:
            document_frequency[ngram] += count
    if not document_frequency:
        return scores  # pycocoevalcap fails on max() of an empty dict; the evaluator then scores 0
    ref_len = np.log(float(num_pairs))

    vector_cache: dict[str, tuple] = {}

    def to_vector(sentence: str):
        if sentence in vector_cache:
            return vector_cache[sentence]
        vec = [dict() for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for ngram, term_freq in cooked[sentence].items():
            df = np.log(max(1.0, document_frequency.get(ngram, 0.0)))
            k = len(ngram) - 1
            vec[k][ngram] = float(term_freq) * (ref_len - df)
            norm[k] += pow(vec[k][ngram], 2)
            if k == 1:
                length += term_freq
        result = (vec, [np.sqrt(x) for x in norm], length)
        vector_cache[sentence] = result
        return result

    pair_cache: dict[tuple[str, str], float] = {}
    for i, (reference, candidate) in enumerate(zip(references, candidates)):
        key = (reference, candidate)
        if key not in pair_cache:
            vec_hyp, norm_hyp, length_hyp = to_vector(candidate)
            vec_ref, norm_ref, length_ref = to_vector(reference)
            delta = float(length_hyp - length_ref)
            penalty = np.e ** (-(delta**2) / (2 * sigma**2))
            val = np.zeros(n)
            for k in range(n):
                ref_k = vec_ref[k]
                for ngram, weight in vec_hyp[k].items():
                    ref_weight = ref_k.get(ngram, 0.0)
                    val[k] += min(weight, ref_weight) * ref_weight
                if norm_hyp[k] != 0 and norm_ref[k] != 0:
                    val[k] /= norm_hyp[k] * norm_ref[k]
                val[k] *= penalty
            pair_cache[key] = float(np.mean(val)) * 10.0
        scores[i] = pair_cache[key]
    return scores


# ------------------------------------------------------------------------------------------------- Java metrics
def _pycocoevalcap_dir() -> str:
    try:
        import pycocoevalcap
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise CaptionMetricUnavailableError(
            "METEOR and SPICE need pycocoevalcap: pip install 'captionformer_hf[metrics]'"
        ) from error
    return list(pycocoevalcap.__path__)[0]  # a namespace package: no __file__


def _require_java(metric: str) -> str:
    java = shutil.which("java")
    if java is None:
        raise CaptionMetricUnavailableError(
            f"{metric.upper()} needs a Java runtime (`java` on PATH), none found; install one (e.g. apt-get install "
            f"default-jre-headless) or leave '{metric}' out of caption_metrics"
        )
    return java


class MeteorScorer:
    """METEOR 1.5 through pycocoevalcap's jar and its ``-stdio`` protocol; one JVM, started on first use and reused.

    Per-pair scores equal pycocoevalcap's ``Meteor().compute_score`` per-item scores (same jar, same command)."""

    _instance: MeteorScorer | None = None
    _instance_lock = threading.Lock()

    def __init__(self):
        java = _require_java("meteor")
        directory = os.path.join(_pycocoevalcap_dir(), "meteor")
        jar = os.path.join(directory, "meteor-1.5.jar")
        if not os.path.exists(jar):
            raise CaptionMetricUnavailableError(f"METEOR jar not found at {jar}")
        self._process = subprocess.Popen(
            [java, "-jar", "-Xmx2G", "meteor-1.5.jar", "-", "-", "-stdio", "-l", "en", "-norm"],
            cwd=directory,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], float] = {}
        atexit.register(self.close)

    @classmethod
    def shared(cls) -> MeteorScorer:
        with cls._instance_lock:
            if cls._instance is None or cls._instance._process.poll() is not None:
                cls._instance = cls()
            return cls._instance

    def _readline(self) -> str:
        line = self._process.stdout.readline()
        if not line:
            raise CaptionMetricUnavailableError("the METEOR Java process stopped answering")
        return line.decode().strip()

    def pair_scores(self, references: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
        todo = []
        for key in dict.fromkeys(zip(references, candidates)):
            if key not in self._cache:
                todo.append(key)
        if todo:
            with self._lock:
                stats = []
                for reference, candidate in todo:
                    hypothesis = candidate.replace("|||", "").replace("  ", " ")
                    line = " ||| ".join(("SCORE", reference, hypothesis)).replace("\n", " ")
                    self._process.stdin.write(f"{line}\n".encode())
                    self._process.stdin.flush()
                    stats.append(self._readline())
                self._process.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode())
                self._process.stdin.flush()
                for key in todo:
                    self._cache[key] = float(self._readline())
                self._readline()  # corpus score
        return np.array([self._cache[key] for key in zip(references, candidates)], dtype=np.float64)

    def close(self) -> None:
        process = getattr(self, "_process", None)
        if process is not None and process.poll() is None:
            try:
                process.stdin.close()
            except OSError:
                pass
            process.kill()
            process.wait()


def check_caption_metrics_runnable(metrics) -> None:
    """Raise :class:`CaptionMetricUnavailableError` (naming the fix) when a chosen metric cannot run here: METEOR and
    SPICE need pycocoevalcap and a Java runtime, SPICE also the Stanford CoreNLP jars. Called before any work."""
    for metric in metrics:
        if metric in ("meteor", "spice"):
            _require_java(metric)
            directory = os.path.join(_pycocoevalcap_dir(), "meteor")
            if metric == "meteor" and not os.path.exists(os.path.join(directory, "meteor-1.5.jar")):
                raise CaptionMetricUnavailableError(f"METEOR jar not found at {directory}: reinstall pycocoevalcap")
            if metric == "spice":
                _spice_dir()


def spice_available() -> bool:
    try:
        _require_java("spice")
        _spice_dir()
    except CaptionMetricUnavailableError:
        return False
    return True


def _spice_dir() -> str:
    directory = os.path.join(_pycocoevalcap_dir(), "spice")
    jar = os.path.join(directory, "lib", "stanford-corenlp-3.6.0.jar")
    models = os.path.join(directory, "lib", "stanford-corenlp-3.6.0-models.jar")
    if not (os.path.exists(jar) and os.path.exists(models)):
        raise CaptionMetricUnavailableError(
            "SPICE needs the Stanford CoreNLP 3.6.0 jars in "
            f"{os.path.join(directory, 'lib')} (pycocoevalcap downloads them on first use: run "
            "`python -c 'from pycocoevalcap.spice.spice import Spice; Spice()'` once with network); without them "
            "choose caption_metrics=('cider', 'meteor') (command line: --caption-metrics cider meteor)"
        )
    return directory


class SpiceScorer:
    """SPICE through pycocoevalcap (F-score of 'All'), each unique pair scored once."""

    def __init__(self):
        _require_java("spice")
        _spice_dir()
        from pycocoevalcap.spice.spice import Spice

        self._spice = Spice()
        self._cache: dict[tuple[str, str], float] = {}

    def pair_scores(self, references: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
        todo = [key for key in dict.fromkeys(zip(references, candidates)) if key not in self._cache]
        if todo:
            gts = {i: [reference] for i, (reference, _) in enumerate(todo)}
            res = {i: [candidate] for i, (_, candidate) in enumerate(todo)}
            _, scores = self._spice.compute_score(gts, res)
            for key, score in zip(todo, scores):
                value = score["All"]["f"] if isinstance(score, dict) else score
                self._cache[key] = float(value) if not math.isnan(float(value)) else 0.0
        return np.array([self._cache[key] for key in zip(references, candidates)], dtype=np.float64)


def get_pair_scorer(metric: str):
    """A callable ``(references, candidates, multiplicities) -> per-pair scores`` for ``metric``."""
    if metric == "cider":
        return cider_d_pair_scores
    if metric == "meteor":
        scorer = MeteorScorer.shared()
        return lambda refs, cands, mult=None: scorer.pair_scores(refs, cands)
    if metric == "spice":
        scorer = SpiceScorer()
        return lambda refs, cands, mult=None: scorer.pair_scores(refs, cands)
    raise ValueError(f"`caption_metrics` entries must be among {SUPPORTED_CAPTION_METRICS}, got {metric!r}")
