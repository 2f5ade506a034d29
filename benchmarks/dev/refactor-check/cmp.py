import json, sys, pathlib
base, new = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
bad = 0
for d in sorted(base.iterdir()):
    nd = new / d.name
    if not (nd / "results.json").exists():
        print("MISSING", d.name); bad += 1; continue
    strip = lambda r: {k: v for k, v in r.items() if "wall" not in k and not k.endswith("_s") and "time" not in k}
    a = [strip(json.loads(l)) for l in open(d / "metrics.jsonl")]
    b = [strip(json.loads(l)) for l in open(nd / "metrics.jsonl")]
    ra, rb = json.load(open(d / "results.json")), json.load(open(nd / "results.json"))
    same = a == b and ra["meta_test_return"] == rb["meta_test_return"] and ra["final_eval"] == rb["final_eval"]
    print("SAME" if same else "DIFF", d.name, ra["meta_test_return"], rb["meta_test_return"])
    bad += not same
print("bad", bad)
