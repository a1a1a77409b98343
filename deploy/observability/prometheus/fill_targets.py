#!/usr/bin/env python3
"""Fill prometheus.yml's static targets from the output of `fanout up --metrics`.

`fanout up --metrics` prints the cluster with every /metrics endpoint on a free port:

      endpoint  http://127.0.0.1:43779  (root, pid 15074)
      metrics   http://127.0.0.1:43595/metrics  (root)
      shard 0      2,605 docs  127.0.0.1:41143 (pid 15055, metrics 127.0.0.1:35117)  127.0.0.1:41031 (...)

This script reads that text (a file, or stdin), and writes prometheus.yml with the blocks between the
`# BEGIN fanout-... targets` / `# END ...` markers replaced by the real targets: the root, and every leaf with
target labels shard="<id>" and replica="http://<grpc addr>". Standard library only; the tests import
`parse_up_output` and `render_config`.

    python3 fill_targets.py --up-log up.log --out /tmp/prom/prometheus.yml [--scrape-interval 1s]
"""

import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATE = os.path.join(HERE, "prometheus.yml")
RULES = os.path.join(HERE, "fanout-alerts.yaml")

_ROOT_METRICS = re.compile(r"^\s*metrics\s+http://(\S+?)/metrics\s+\(root\)", re.M)
_ROOT_METRICS_ANNOUNCE = re.compile(r"^fanout up metrics on (\S+)\s*$", re.M)
_ENDPOINT = re.compile(r"^\s*endpoint\s+(http://\S+)", re.M)
_ENDPOINT_ANNOUNCE = re.compile(r"^fanout up listening on (\S+)\s*$", re.M)
_SHARD_LINE = re.compile(r"^\s*shard (\d+)\s.*$", re.M)
_LEAF = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3}:\d+|\[[0-9a-fA-F:]+\]:\d+) \(pid \d+, metrics (\S+?)\)")


class ParseError(ValueError):
    pass


def parse_up_output(text):
    """The cluster that `fanout up --metrics` printed: a dict with `endpoint` (http://host:port of the root),
    `root_metrics` (host:port) and `leaves` (a list of dicts: shard, addr, replica, metrics)."""
    endpoint = _ENDPOINT.search(text) or _ENDPOINT_ANNOUNCE.search(text)
    root_metrics = _ROOT_METRICS.search(text) or _ROOT_METRICS_ANNOUNCE.search(text)
    if not endpoint:
        raise ParseError("no root endpoint in the fanout up output")
    if not root_metrics:
        raise ParseError("no root metrics address in the fanout up output (was it started with --metrics?)")
    endpoint = endpoint.group(1)
    if not endpoint.startswith("http"):
        endpoint = "http://" + endpoint
    leaves = []
    for line in _SHARD_LINE.finditer(text):
        shard = line.group(1)
        for leaf in _LEAF.finditer(line.group(0)):
            addr, metrics = leaf.group(1), leaf.group(2)
            leaves.append({"shard": shard, "addr": addr, "replica": "http://" + addr, "metrics": metrics})
    if not leaves:
        raise ParseError("no leaf metrics addresses in the fanout up output")
    return {"endpoint": endpoint, "root_metrics": root_metrics.group(1), "leaves": leaves}


def _replace_block(text, job, lines):
    pattern = re.compile(
        r"(?P<indent>[ \t]*)# BEGIN %s targets\n.*?(?P=indent)# END %s targets" % (job, job), re.S
    )
    match = pattern.search(text)
    if not match:
        raise ParseError("no BEGIN/END %s targets markers in the template" % job)
    indent = match.group("indent")
    body = "".join(indent + line + "\n" for line in lines)
    block = "%s# BEGIN %s targets\n%s%s# END %s targets" % (indent, job, body, indent, job)
    return text[: match.start()] + block + text[match.end():]


def render_config(cluster, template_text=None, scrape_interval=None, rules_path=RULES):
    """prometheus.yml for `cluster` (from parse_up_output). JSON is YAML, so targets and labels are written as
    JSON flow values and need no escaping of their own."""
    if template_text is None:
        with open(TEMPLATE, encoding="utf-8") as template:
            template_text = template.read()
    text = template_text
    root = ["- targets: %s" % json.dumps([cluster["root_metrics"]]),
            "  labels: %s" % json.dumps({"role": "root"})]
    leaves = []
    for leaf in cluster["leaves"]:
        leaves.append("- targets: %s" % json.dumps([leaf["metrics"]]))
        leaves.append("  labels: %s" % json.dumps(
            {"role": "leaf", "shard": leaf["shard"], "replica": leaf["replica"]}))
    text = _replace_block(text, "fanout-root", root)
    text = _replace_block(text, "fanout-leaf", leaves)
    if rules_path is not None:
        text = re.sub(r"(?m)^(\s*)- fanout-alerts\.yaml\s*$",
                      lambda m: m.group(1) + "- " + json.dumps(os.path.abspath(rules_path)), text)
    if scrape_interval:
        for key in ("scrape_interval", "evaluation_interval"):
            text = re.sub(r"(?m)^(  %s:) \S+" % key, r"\1 " + scrape_interval, text, count=1)
        # The timeout may not exceed the interval.
        text = re.sub(r"(?m)^(  scrape_timeout:) \S+", r"\1 " + scrape_interval, text, count=1)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--up-log", help="file holding fanout up's stdout (default: stdin)")
    parser.add_argument("--out", help="where to write the config (default: stdout)")
    parser.add_argument("--template", default=TEMPLATE, help="the prometheus.yml with BEGIN/END markers")
    parser.add_argument("--rules", default=RULES, help="rules file to load (written as an absolute path)")
    parser.add_argument("--scrape-interval", help="e.g. 1s (also sets evaluation_interval and scrape_timeout)")
    args = parser.parse_args(argv)
    if args.up_log:
        with open(args.up_log, encoding="utf-8") as log:
            text = log.read()
    else:
        text = sys.stdin.read()
    try:
        cluster = parse_up_output(text)
    except ParseError as error:
        print("fill_targets.py: %s" % error, file=sys.stderr)
        return 2
    with open(args.template, encoding="utf-8") as template:
        config = render_config(cluster, template.read(), args.scrape_interval, args.rules)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as out:
            out.write(config)
        print("fill_targets.py: wrote %s (root %s, %d leaves)" % (args.out, cluster["root_metrics"],
                                                                 len(cluster["leaves"])), file=sys.stderr)
    else:
        sys.stdout.write(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
