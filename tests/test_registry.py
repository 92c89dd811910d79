import pytest

from salbench.errors import UsageError
from salbench.registry import Registry, split_list


def make():
    r = Registry("widget")
    for n in ("gradcam", "gradient", "guided", "centre"):
        r.add(n, object())
    return r


def test_select_all_and_patterns_keep_order_without_duplicates():
    r = make()
    assert r.select(None) == ["centre", "gradcam", "gradient", "guided"]
    assert r.select("grad*,centre,gradcam") == ["gradcam", "gradient", "centre"]
    assert r.select("*", exclude="grad*") == ["centre", "guided"]


def test_unknown_name_error_names_it_and_suggests():
    with pytest.raises(UsageError) as e:
        make().get("gradcm")
    assert "'gradcm'" in str(e.value) and "gradcam" in str(e.value)


def test_pattern_matching_nothing_is_an_error():
    with pytest.raises(UsageError, match="'zzz\\*'"):
        make().select("zzz*")


def test_double_registration_is_refused():
    r = make()
    with pytest.raises(ValueError):
        r.add("gradcam", object())


def test_split_list():
    assert split_list(" a, b ,,c ") == ["a", "b", "c"]
    assert split_list(None) == []
