"""The DSKDv2 paper's greedy exact token alignment, written the straightforward way
(string histories, method doc section 4.2): the reference the package's linear-time
`eta_strict_pairs` is tested against, and the baseline of benchmarks/alignment.py."""

from __future__ import annotations


def paper_eta(tea_tokens: list[str], stu_tokens: list[str], tea_eos: str, stu_eos: str) -> list[tuple[int, int]]:
    """(teacher index, student index) pairs."""
    T = [t.replace("▁", "").replace("Ġ", "") for t in tea_tokens]
    S = [s.replace("▁", "").replace("Ġ", "") for s in stu_tokens]
    tea_eos, stu_eos = tea_eos.replace("▁", "").replace("Ġ", ""), stu_eos.replace("▁", "").replace("Ġ", "")
    i = j = 0
    hist_t = hist_s = ""
    pairs = []
    while i < len(T) and j < len(S):
        if hist_t == hist_s and (T[i] == S[j] or (T[i] == tea_eos and S[j] == stu_eos)):
            pairs.append((i, j))
            hist_t, hist_s, i, j = hist_t + T[i], hist_s + S[j], i + 1, j + 1
        elif len(hist_t) > len(hist_s):
            hist_s, j = hist_s + S[j], j + 1
        elif len(hist_t) < len(hist_s):
            hist_t, i = hist_t + T[i], i + 1
        else:  # same length, different text: advance both
            hist_t, hist_s, i, j = hist_t + T[i], hist_s + S[j], i + 1, j + 1
    return pairs
