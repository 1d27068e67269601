#!/usr/bin/env python3
"""Docs check (run by hack/lint.sh): statements that once were true and went stale.

1. "Not yet" statements are checked against the code. A line of docs/ or README.md that
   says something is missing (not yet, planned, rejected until, not available, not
   supported, until ... lands) must carry, on that line or the one before, a probe:
     <!-- refused: KIND {spec fields} -->   the data plane's --check must refuse a
                                            minimal valid configuration with these spec
                                            fields merged into its KIND (LLMBackend,
                                            LLMRoute, LLMConsumer, DataPlane); once the
                                            code accepts them the statement is stale
     <!-- tested: NAME -->                  a test named NAME exists under tests/ (for what
                                            configuration cannot show)
   A probe that no longer holds fails, and so does a "not yet" line without one.
2. Phrases that once were true and went stale (RULES): a pattern that may not appear
   unless the line also matches its allowed context."""
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
RULES = [
    # (forbidden, allowed on the same line, why)
    (r"[Nn]ot yet: tools", None, "tools and tool messages are translated for every provider"),
    (r"\b(Bedrock|Gemini)\b[^.]*\b501\b", None, "Bedrock and Gemini are implemented"),
    (r"501[^.]*\b(Bedrock|Gemini)\b", None, "Bedrock and Gemini are implemented"),
    (r"caSecretRef[^.]*\badds\b", None, "tls.caSecretRef replaces the system CA bundle"),
    (r"(VertexAI|Vertex AI|Cohere)[^.]*answer 501", None,
     "VertexAI and Cohere are refused at parse; no accepted backend answers 501"),
    (r"(VertexAI|Vertex AI)[^.]*(refused|planned|not supported)", r"[Ww]orkload [Ii]dentity|authorized_user|metadata server|embedding|Llama",
     "VertexAI is implemented (docs/providers.md)"),
    (r"(JWT|rate limits|budgets)[^.]*(not in this version|are refused as unknown)", None,
     "JWT, rate limits and budgets are implemented (docs/limits.md)"),
    (r"\b(DESIGN|STYLE)\.md\b", None,
     "the design documents live outside the repository: cite docs/architecture.md"),
]


NOT_YET = re.compile(r"[Nn]ot yet\b(?! shipped)|\bplanned\b|rejected until|refused until|"
                     r"\bnot available\b|[Nn]ot supported|until the [a-z ]+ (lands|work)")
PROBE = re.compile(r"<!-- (refused|tested): (.*?) -->")
BASE = {
    "DataPlane": {"listen": "127.0.0.1:1", "admin": "127.0.0.1:2"},
    "LLMBackend": {"provider": "vLLM", "upstream": {"baseURL": "http://127.0.0.1:3/v1"}},
    "LLMRoute": {"match": {"models": ["m"]}, "backendRefs": [{"name": "b"}]},
    "LLMConsumer": {"apiKeys": [{"secretRef": {"name": "keys"}}]},
}


def dataplane():
    for b in (os.environ.get("KW_BUILD"), ROOT / "build", ROOT / "build-release"):
        if b and (pathlib.Path(b) / "dataplane" / "knoway-dataplane").exists():
            return str(pathlib.Path(b) / "dataplane" / "knoway-dataplane")
    return None


def refused(binary, kind, fields):
    """Whether --check refuses the minimal configuration with fields in KIND's spec."""
    docs = []
    for k, spec in BASE.items():
        spec = dict(spec, **fields) if k == kind else spec
        meta = {"name": "t"} if k == "DataPlane" else {"name": "b" if k == "LLMBackend" else "x"}
        docs.append({"apiVersion": "llm.knoway.dev/v1alpha1", "kind": k, "metadata": meta,
                     "spec": spec})
    docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keys"},
                 "stringData": {"k": "sk-docs-check-0123456789"}})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write("\n---\n".join(json.dumps(d) for d in docs))
    try:
        rc = subprocess.run([binary, "--check", "-c", f.name], capture_output=True).returncode
    finally:
        os.unlink(f.name)
    return rc != 0


def check_not_yet(files):
    binary = dataplane()
    tests = "\n".join(p.read_text(errors="replace") for p in (ROOT / "tests").rglob("*")
                      if p.is_file() and p.suffix in (".py", ".c", ".mjs", ".sh")
                      and "node_modules" not in p.parts)
    bad = probes = 0
    for f in files:
        lines = f.read_text().splitlines()
        for n, line in enumerate(lines, 1):
            found = PROBE.findall(line) + (PROBE.findall(lines[n - 2]) if n > 1 else [])
            if NOT_YET.search(PROBE.sub("", line)) and not found:
                print("docs-check: %s:%d: a \"not yet\" statement without a probe "
                      "(<!-- refused: KIND {fields} --> or <!-- tested: NAME -->)\n    %s"
                      % (f.relative_to(ROOT), n, line.strip()))
                bad += 1
            for kind, arg in PROBE.findall(line):
                probes += 1
                if kind == "tested":
                    if not re.search(r"\b%s\b" % re.escape(arg.strip()), tests):
                        print("docs-check: %s:%d: no test named %s" % (f.relative_to(ROOT), n, arg))
                        bad += 1
                    continue
                what, _, fields = arg.partition(" ")
                if what not in BASE:
                    print("docs-check: %s:%d: probe kind %s unknown" % (f.relative_to(ROOT), n, what))
                    bad += 1
                elif binary is None:
                    print("docs-check: no knoway-dataplane build (KW_BUILD, build/): cannot check")
                    return bad + 1, probes
                elif not refused(binary, what, json.loads(fields)):
                    print("docs-check: %s:%d: stale: the docs say %s %s is not there yet, but "
                          "--check accepts it\n    %s" % (f.relative_to(ROOT), n, what, fields,
                                                         line.strip()))
                    bad += 1
    return bad, probes


def main():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    bad, probes = check_not_yet(files)
    for f in files:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            for pat, allow, why in RULES:
                if re.search(pat, line) and not (allow and re.search(allow, line)):
                    print("docs-check: %s:%d: stale: %s\n    %s" % (f.relative_to(ROOT), n, why,
                                                                  line.strip()))
                    bad += 1
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    for f in examples:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if re.search(r"^\s*namespace:\s*ml\b", line):
                print("docs-check: %s:%d: examples must apply on a fresh cluster" % (
                    f.relative_to(ROOT), n))
                bad += 1
    if bad:
        sys.exit(1)
    print("docs-check: %d files clean, %d \"not yet\" probes hold" % (len(files) + len(examples),
                                                                    probes))


if __name__ == "__main__":
    main()
