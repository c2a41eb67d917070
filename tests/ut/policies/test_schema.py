"""Policy YAML: the example validates; bad files are refused naming file, line and field."""

from __future__ import annotations

import pytest

from policies.schema import PolicyError, parse_policies

GOOD = """\
version: 1
default_category: chat
categories:
  - name: code
    keywords: [python]
    policy: {similarity_threshold: 0.95, ttl_seconds: 60, max_entries: 10}
  - name: chat
    policy: {similarity_threshold: 0.9, ttl_seconds: 60, max_entries: 10}
"""


def test_example_policies_validate(policies_path):
    config = parse_policies(policies_path.read_text(), str(policies_path))
    names = {c.name for c in config.categories}
    assert {"code", "math", "factual", "chat", "time_sensitive"} <= names
    assert config.category("time_sensitive").policy.cacheable is False


def test_good_document_parses():
    config = parse_policies(GOOD, "good.yaml")
    assert config.category("code").policy.similarity_threshold == 0.95
    assert config.category("chat").policy.compute_profile == "full"


@pytest.mark.parametrize(
    "old, new, line, field",
    [
        ("ttl_seconds: 60, max_entries: 10}\n  - name: chat", "ttl_seconds: -5, max_entries: 10}\n  - name: chat", 6, "categories[0=code].policy.ttl_seconds"),
        ("similarity_threshold: 0.9,", "similarity_threshold: 1.9,", 8, "categories[1=chat].policy.similarity_threshold"),
        ("    keywords: [python]\n", "    keywords: [python]\n    colour: blue\n", 6, "categories[0=code].colour"),
    ],
)
def test_invalid_field_names_file_line_and_field(old, new, line, field):
    text = GOOD.replace(old, new, 1)
    assert text != GOOD
    with pytest.raises(PolicyError) as err:
        parse_policies(text, "bad.yaml")
    assert f"bad.yaml:{line}: {field}:" in str(err.value)


def test_yaml_syntax_error_names_line():
    with pytest.raises(PolicyError) as err:
        parse_policies(GOOD + "  - name: [unclosed\n", "broken.yaml")
    assert str(err.value).startswith("broken.yaml:")
    assert "not valid YAML" in str(err.value)


def test_default_category_must_exist():
    with pytest.raises(PolicyError, match="default_category 'nope'"):
        parse_policies(GOOD.replace("default_category: chat", "default_category: nope"), "x.yaml")


def test_duplicate_categories_refused():
    text = GOOD.replace("name: code", "name: chat")
    with pytest.raises(PolicyError, match="duplicate category names: chat"):
        parse_policies(text, "x.yaml")


def test_category_without_examples_or_keywords_refused():
    text = GOOD.replace("    keywords: [python]\n", "")
    with pytest.raises(PolicyError, match="needs examples or keywords"):
        parse_policies(text, "x.yaml")


def test_classifier_section():
    config = parse_policies(GOOD.replace("categories:", "classifier: {weights: clf.npz}\ncategories:", 1), "c.yaml")
    assert config.classifier is not None
    assert config.classifier.weights == "clf.npz" and config.classifier.confidence_floor == 0.6
    bad = GOOD.replace("categories:", "classifier:\n  weights: clf.npz\n  confidence_floor: 1.5\ncategories:", 1)
    with pytest.raises(PolicyError) as err:
        parse_policies(bad, "c.yaml")
    assert "c.yaml:5: classifier.confidence_floor:" in str(err.value)
    with pytest.raises(PolicyError, match="c.yaml:3: classifier.weights:"):
        parse_policies(GOOD.replace("categories:", "classifier: {weights: ''}\ncategories:", 1), "c.yaml")


def _path_fields(model, prefix=()) -> set[tuple[str, ...]]:
    """Every field whose description says it is a file relative to the policy file's folder."""
    from pydantic import BaseModel

    found = set()
    for name, field in model.model_fields.items():
        if "relative to the policy file's folder" in (field.description or ""):
            found.add((*prefix, name))
        for arg in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                found |= _path_fields(arg, (*prefix, name))
    return found


def test_path_fields_lists_every_file_field_and_rebased_moves_only_relative_ones():
    from policies.schema import PATH_FIELDS, PolicyConfig, rebased

    assert set(PATH_FIELDS) == _path_fields(PolicyConfig)  # a new file field must be listed
    doc = {"compute_profiles": "p.json", "classifier": {"weights": "/abs/clf.npz"}, "categories": []}
    moved = rebased(doc, "/etc/policies/")
    assert moved["compute_profiles"] == "/etc/policies/p.json" and moved["classifier"]["weights"] == "/abs/clf.npz"
    assert doc["compute_profiles"] == "p.json"  # the input is not changed
    assert rebased({"categories": []}, "/x") == {"categories": []}
