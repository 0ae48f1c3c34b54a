"""The built-in policies (one per modelled kernel version), by name."""
from mmugather.errors import InputError
from mmugather.policies.linux_2_6_39 import Linux2639
from mmugather.policies.linux_3_0 import Linux30
from mmugather.policies.linux_6_18 import Linux618

POLICIES = {cls.name: cls for cls in (Linux2639, Linux30, Linux618)}


def get_policy(name: str):
    """The policy class called `name`, or a plugin given as MODULE:CLASS or FILE.py:CLASS
    (policies/plugins.py), or an InputError naming the known ones."""
    if name in POLICIES:
        return POLICIES[name]
    from mmugather.policies.plugins import is_plugin_spec, load_policy
    if is_plugin_spec(name):
        return load_policy(name)
    raise InputError(f"unknown policy '{name}' (expected one of: {', '.join(POLICIES)}, "
                     f"or a plugin as MODULE:CLASS or FILE.py:CLASS)")
