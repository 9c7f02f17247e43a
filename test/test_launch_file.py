"""launch/ovs.launch.py: loaded with launch_ros where it is installed, otherwise checked statically (ast)."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
LAUNCH_FILE = REPO / "launch" / "ovs.launch.py"


def _literal_kwargs(call: ast.Call) -> dict:
    out = {}
    for kw in call.keywords:
        try:
            out[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            out[kw.arg] = kw.value
    return out


def _module_constants(tree: ast.Module) -> dict:
    consts = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                consts[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                if isinstance(node.value, ast.Call) and getattr(node.value.func, "attr", "") == "join":
                    consts[node.targets[0].id] = str(Path(*[ast.literal_eval(a) for a in node.value.args]))
    return consts


def _keyword(call: ast.Call, name: str) -> ast.AST:
    return next(kw.value for kw in call.keywords if kw.arg == name)


def _resolves_to_launch_config(tree: ast.Module, value: ast.AST, argument: str) -> bool:
    """`value` is LaunchConfiguration(argument), directly or through a local variable assigned to it."""
    expected = f"LaunchConfiguration({argument!r})"
    if ast.unparse(value) == expected:
        return True
    return isinstance(value, ast.Name) and any(
        isinstance(n, ast.Assign) and [ast.unparse(t) for t in n.targets] == [value.id]
        and ast.unparse(n.value) == expected for n in ast.walk(tree))


def test_launch_file_static():
    tree = ast.parse(LAUNCH_FILE.read_text())
    consts = _module_constants(tree)
    assert consts["PACKAGE"] == "ovs_ros" and consts["NODE_NAME"] == "ovs" and consts["EXECUTABLE"] == "ovs_node"
    params_file = REPO / consts["PARAMS_FILE"]
    assert params_file.is_file()
    data = yaml.safe_load(params_file.read_text())
    assert "ros__parameters" in data["/**"]
    # every key in the params file is a declared parameter, and the node's defaults are in the file
    from ovs_ros.node.params import PARAMS_BY_NAME

    keys = set(data["/**"]["ros__parameters"])
    assert keys <= set(PARAMS_BY_NAME), keys - set(PARAMS_BY_NAME)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Node"]
    assert len(calls) == 1
    kwargs = {kw.arg: kw.value for kw in calls[0].keywords}
    assert isinstance(kwargs["package"], ast.Name) and kwargs["package"].id == "PACKAGE"
    assert isinstance(kwargs["executable"], ast.Name) and kwargs["executable"].id == "EXECUTABLE"
    assert isinstance(kwargs["name"], ast.Name) and kwargs["name"].id == "NODE_NAME"
    remaps = ast.unparse(kwargs["remappings"])
    assert "'image'" in remaps and "'image/compressed'" in remaps
    declared = [ast.literal_eval(n.args[0]) for n in ast.walk(tree)
                if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "DeclareLaunchArgument"]
    assert {"image_topic", "params_file", "namespace", "autostart", "use_sim_time", "log_level"} <= set(declared)
    # the params file is loaded (and only it: a parameters dict here would override the file's values)
    assert ast.unparse(kwargs["parameters"]) == "[LaunchConfiguration('params_file')]"
    defaults = {ast.literal_eval(n.args[0]): n for n in ast.walk(tree)
                if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "DeclareLaunchArgument"}
    params_default = ast.unparse(_keyword(defaults["params_file"], "default_value"))
    assert "share" in params_default and "PARAMS_FILE" in params_default
    # `image` is remapped to the image_topic argument, `image/compressed` to its /compressed sibling
    pairs = {ast.literal_eval(t.elts[0]): t.elts[1] for t in kwargs["remappings"].elts}
    assert _resolves_to_launch_config(tree, pairs["image"], "image_topic")
    assert "'/compressed'" in ast.unparse(pairs["image/compressed"])
    # input_mode: empty by default, so the params file decides; given, it reaches the node as --input-mode
    assert ast.literal_eval(_keyword(defaults["input_mode"], "default_value")) == ""
    arguments = ast.unparse(kwargs["arguments"])
    for flag, argument in (("--input-mode", "input_mode"), ("--autostart", "autostart"),
                           ("--use-sim-time", "use_sim_time")):
        assert ast.literal_eval(_keyword(defaults[argument], "default_value")) == ""
        assert f"['{flag}=', LaunchConfiguration('{argument}')]" in arguments
    assert "LaunchConfiguration('log_level')" in ast.unparse(kwargs["ros_arguments"])
    assert _resolves_to_launch_config(tree, kwargs["namespace"], "namespace")
    # the console script it names exists
    setup = (REPO / "setup.py").read_text()
    assert "ovs_node = ovs_ros.node:main" in setup
    assert 'glob("launch/*.launch.py")' in setup and 'glob("config/*.yaml")' in setup


@pytest.mark.skipif(importlib.util.find_spec("launch_ros") is None, reason="launch_ros not installed")
def test_launch_file_loads_with_launch_ros():  # pragma: no cover - only where launch_ros exists
    from launch import LaunchContext
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    source = PythonLaunchDescriptionSource(str(LAUNCH_FILE))
    description = source.get_launch_description(LaunchContext())
    names = [getattr(e, "name", None) for e in description.entities]
    assert {"image_topic", "params_file", "namespace"} <= set(n for n in names if n)
    nodes = [e for e in description.entities if type(e).__name__ == "Node"]
    assert len(nodes) == 1 and nodes[0].node_package == "ovs_ros" and nodes[0].node_executable == "ovs_node"
