# The data set of the import and $export measurements (bench/RESULTS.md, 2026-12-07):
# part1 = 200,000 resources, part2 = 800,000 more, NDJSON, written under /tmp/databench.
import json, sys, os
# part 1: 40k patients + 160k observations (200k); part 2: 160k patients + 640k observations (800k)
os.makedirs("/tmp/databench", exist_ok=True)
os.chdir("/tmp/databench")

def write(dirname, p0, p1):
    os.makedirs(dirname, exist_ok=True)
    with open(f"{dirname}/Patient.ndjson", "w") as f:
        for n in range(p0, p1):
            f.write(json.dumps({"resourceType": "Patient", "id": f"p{n}", "gender": "female" if n % 2 else "male",
                "birthDate": f"19{50 + n % 50}-0{1 + n % 9}-1{n % 10}",
                "name": [{"family": f"Family{n % 5000}", "given": [f"Given{n % 300}"]}],
                "identifier": [{"system": "urn:bench", "value": str(n)}]}) + "\n")
    with open(f"{dirname}/Observation.ndjson", "w") as f:
        for n in range(p0, p1):
            for k in range(4):
                f.write(json.dumps({"resourceType": "Observation", "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": f"{8000 + k}-{k}"}]},
                    "subject": {"reference": f"Patient/p{n}"},
                    "effectiveDateTime": f"2026-0{1 + k}-1{n % 10}T10:00:00Z",
                    "valueQuantity": {"value": n % 200, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}) + "\n")
write("part1", 0, 40000)
write("part2", 40000, 200000)
