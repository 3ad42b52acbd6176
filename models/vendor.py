#!/usr/bin/env python3
"""Copy the botocore service models Fleetport serves into crates/fleetport-proto/models/.

Documentation strings are dropped (they are most of the size and nothing reads them at run time);
everything else is kept as botocore ships it. Run with the botocore you want to pin:
    .venv/bin/python models/vendor.py
"""
import gzip
import json
import os
import sys

import botocore

SERVICES = [("ecs", "2014-11-13"), ("ecr", "2015-09-21"), ("elbv2", "2015-12-01"), ("acm", "2015-12-08"),
            ("iam", "2010-05-08"), ("sts", "2011-06-15")]
DROP = {"documentation", "documentationUrl", "examples"}


def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k not in DROP}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def main():
    base = os.path.join(os.path.dirname(botocore.__file__), "data")
    out = os.path.join(os.path.dirname(__file__), "..", "crates", "fleetport-proto", "models")
    os.makedirs(out, exist_ok=True)
    for svc, ver in SERVICES:
        path = os.path.join(base, svc, ver, "service-2.json")
        opener = gzip.open if os.path.exists(path + ".gz") else open
        with opener(path + (".gz" if opener is gzip.open else ""), "rt") as f:
            model = strip(json.load(f))
        model["metadata"]["fleetportBotocoreVersion"] = botocore.__version__
        with open(os.path.join(out, f"{svc}.json"), "w") as f:
            json.dump(model, f, separators=(",", ":"), sort_keys=True)
        print(svc, len(model["operations"]), "operations", file=sys.stderr)


if __name__ == "__main__":
    main()
