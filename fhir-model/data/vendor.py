#!/usr/bin/env python3
"""Write trimmed, minified copies of FHIR R4 definitions to stdout.

Usage: python3 vendor.py fhir.schema.json [profiles-resources.json profiles-types.json] > out
       python3 vendor.py search-parameters search-parameters.json > out
       python3 vendor.py compartment compartmentdefinition-patient.json > out
       python3 vendor.py summary profiles-resources.json > out
       python3 vendor.py choices fhir.schema.json > out

Drops every `description` annotation (most of the file) but keeps elements that are *named*
`description` inside a `properties` map.

The R4 schema leaves required *primitive* elements (Observation.status, Bundle.type, ...) out
of `required`, because FHIR JSON may carry such a value as `_status` extensions alone. Given the
R4 StructureDefinition bundles, elements with min >= 1 and a single primitive type are added to
their definition's `required` list, so a missing status is reported.
"""
import json
import sys


def strip(schema):
    if isinstance(schema, list):
        return [strip(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "description":
            continue
        if key == "properties":
            # Keys here are element names, not keywords: keep them all.
            out[key] = {name: strip(sub) for name, sub in value.items()}
        else:
            out[key] = strip(value)
    return out


def definition_for(definitions, path):
    """The schema definition holding the last element of `path`, following `$ref`s."""
    definition = definitions.get(path[0])
    for name in path[1:-1]:
        prop = (definition or {}).get("properties", {}).get(name, {})
        ref = prop.get("$ref") or prop.get("items", {}).get("$ref")
        if not ref:
            return None
        definition = definitions[ref.split("/")[-1]]
    if definition and path[-1] in definition.get("properties", {}):
        return definition
    return None


def require_primitives(definitions, bundle):
    for entry in bundle["entry"]:
        sd = entry["resource"]
        if sd.get("resourceType") != "StructureDefinition":
            continue
        if sd.get("derivation") != "specialization" or sd["kind"] not in ("resource", "complex-type"):
            continue
        for element in sd["snapshot"]["element"]:
            path = element["path"].split(".")
            types = [t["code"] for t in element.get("type", [])]
            if (
                len(path) < 2
                or element.get("min", 0) < 1
                or path[-1].endswith("[x]")
                or len(types) != 1
                or not types[0][:1].islower()  # a primitive, or a system type as in Extension.url
            ):
                continue
            definition = definition_for(definitions, path)
            required = definition.setdefault("required", []) if definition else None
            if required is not None and path[-1] not in required:
                required.append(path[-1])


def search_parameters(bundle):
    """The SearchParameters, keeping what search needs: code, base, type, expression, target,
    and composite components resolved to the component parameter's type and expression."""
    resources = [entry["resource"] for entry in bundle["entry"]]
    by_url = {sp["url"]: sp for sp in resources}
    out = []
    for sp in resources:
        param = {"code": sp["code"], "base": sp["base"], "type": sp["type"]}
        if sp.get("expression"):
            param["expression"] = sp["expression"]
        if sp.get("target"):
            param["target"] = sp["target"]
        if sp.get("component"):
            param["component"] = [
                {"type": by_url[c["definition"]]["type"], "expression": c["expression"]}
                for c in sp["component"]
            ]
        out.append(param)
    return out


def compartment(definition):
    """A CompartmentDefinition as {resource type: [parameter codes]}, types without any left out."""
    return {r["code"]: r["param"] for r in definition["resource"] if r.get("param")}


def summary_elements(bundle):
    """{resource type: sorted top-level element names with isSummary} for the concrete R4
    (4.0.1) resources; choice elements are expanded to their JSON names (`value[x]` with types
    Quantity and string gives `valueQuantity`, `valueString`)."""
    out = {}
    for entry in bundle["entry"]:
        sd = entry["resource"]
        if (
            sd.get("resourceType") != "StructureDefinition"
            or sd.get("kind") != "resource"
            or sd.get("derivation") != "specialization"
            or sd.get("abstract")
            or sd.get("fhirVersion") != "4.0.1"  # Medplum also ships R4B's SubscriptionStatus
        ):
            continue
        names = set()
        for element in sd["snapshot"]["element"]:
            path = element["path"].split(".")
            if len(path) != 2 or not element.get("isSummary"):
                continue
            name = path[1]
            if name.endswith("[x]"):
                base = name[: -len("[x]")]
                names.update(base + t["code"][:1].upper() + t["code"][1:] for t in element["type"])
            else:
                names.add(name)
        out[sd["type"]] = sorted(names)
    return dict(sorted(out.items()))


def choice_elements(schema):
    """{definition: {element: [its JSON names]}} for every choice element (`deceased[x]` of
    Patient gives "deceased": ["deceasedBoolean", "deceasedDateTime"]). The schema does not mark
    choices: they are the properties of one definition that share a name, end in a type name,
    are not arrays (a choice element repeats never) and carry one description (the element's).
    Separate elements that merely look alike, such as Encounter's `reasonCode` and
    `reasonReference` (arrays) or ClinicalImpression.finding's `itemCodeableConcept` and
    `itemReference` (different descriptions), are left out."""
    definitions = schema["definitions"]
    type_names = {name[:1].upper() + name[1:] for name in definitions}
    out = {}
    for name, definition in definitions.items():
        props = {
            p: v
            for p, v in definition.get("properties", {}).items()
            if not p.startswith("_") and v.get("type") != "array"
        }
        groups = {}
        for prop in props:
            for at in range(1, len(prop)):
                if prop[at].isupper() and prop[at:] in type_names:
                    groups.setdefault(prop[:at], []).append(prop)
        for base, forms in sorted(groups.items()):
            if len(forms) > 1 and len({props[f].get("description") for f in forms}) == 1:
                out.setdefault(name, {})[base] = sorted(forms)
    return dict(sorted(out.items()))


def dump(value, pretty_lines=False):
    if pretty_lines:
        # One entry a line: small diffs, still compact.
        sys.stdout.write("[\n")
        sys.stdout.write(
            ",\n".join(json.dumps(v, separators=(",", ":"), ensure_ascii=False) for v in value)
        )
        sys.stdout.write("\n]\n")
    else:
        json.dump(value, sys.stdout, separators=(",", ":"), ensure_ascii=False)
        sys.stdout.write("\n")


def dump_object_lines(value):
    """A JSON object with one member a line."""
    sys.stdout.write("{\n")
    sys.stdout.write(
        ",\n".join(
            json.dumps(k, ensure_ascii=False)
            + ":"
            + json.dumps(v, separators=(",", ":"), ensure_ascii=False)
            for k, v in value.items()
        )
    )
    sys.stdout.write("\n}\n")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    if sys.argv[1] in ("search-parameters", "compartment", "summary", "choices"):
        if len(sys.argv) != 3:
            sys.exit(__doc__)
        with open(sys.argv[2], encoding="utf-8") as f:
            source = json.load(f)
        if sys.argv[1] == "search-parameters":
            dump(search_parameters(source), pretty_lines=True)
        elif sys.argv[1] == "summary":
            dump_object_lines(summary_elements(source))
        elif sys.argv[1] == "choices":
            dump_object_lines(choice_elements(source))
        else:
            dump(compartment(source))
        return
    with open(sys.argv[1], encoding="utf-8") as f:
        schema = strip(json.load(f))
    for profiles in sys.argv[2:]:
        with open(profiles, encoding="utf-8") as f:
            require_primitives(schema["definitions"], json.load(f))
    json.dump(schema, sys.stdout, separators=(",", ":"), ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
