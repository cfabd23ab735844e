"""The npe2 manifest: valid, and every contribution opens through napari's plugin machinery."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

MANIFEST = Path(__file__).resolve().parents[1] / "src" / "napari_unet" / "napari.yaml"


def _manifest() -> dict:
    import napari_unet

    # the manifest napari actually finds (entry point napari.manifest -> napari_unet:napari.yaml)
    path = Path(napari_unet.__file__).parent / "napari.yaml"
    return yaml.safe_load(path.read_text())


def _widgets() -> list[tuple[str, str]]:
    """(display name, python module) of every widget in the manifest."""
    man = _manifest()
    commands = {c["id"]: c["python_name"] for c in man["contributions"]["commands"]}
    return [
        (w["display_name"], commands[w["command"]].split(":")[0])
        for w in man["contributions"]["widgets"]
    ]


def _npe2_validate(*extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-unet", *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_npe2_validate():
    res = _npe2_validate()
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid" in (res.stdout + res.stderr).lower()


def test_npe2_validate_imports():
    """Every python_name in the manifest imports and names a real object."""
    res = _npe2_validate("--imports")
    assert res.returncode == 0, res.stdout + res.stderr


def test_manifest_is_the_one_npe2_finds():
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("napari-unet")
    assert pm.name == "napari-unet"
    assert [w.display_name for w in pm.contributions.widgets] == [name for name, _ in _widgets()]
    assert [s.key for s in pm.contributions.sample_data] == ["nuclei", "nuclei_3d"]


@pytest.mark.gui
@pytest.mark.parametrize("display_name,module", _widgets(), ids=[n for n, _ in _widgets()])
def test_widget_opens_from_plugin_menu(make_napari_viewer, display_name, module):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", display_name)
    assert dock is not None
    assert type(widget).__module__ == module
    assert dock.isAncestorOf(widget.native)  # really docked in the viewer window


@pytest.mark.gui
def test_sample_data_opens(make_napari_viewer):
    import napari

    viewer = make_napari_viewer()
    viewer.open_sample("napari-unet", "nuclei")
    kinds = {type(layer) for layer in viewer.layers}
    assert napari.layers.Image in kinds and napari.layers.Labels in kinds
    labels = next(layer for layer in viewer.layers if isinstance(layer, napari.layers.Labels))
    image = next(layer for layer in viewer.layers if isinstance(layer, napari.layers.Image))
    assert labels.data.shape == image.data.shape[: labels.data.ndim]
    assert labels.data.max() > 0


@pytest.mark.parametrize(
    "module", ["napari_unet", "napari_unet._widgets.segment", "napari_unet._sample_data"]
)
def test_import_does_not_load_torch(module):
    """napari imports these at start-up / when listing the plugin: torch must stay lazy."""
    code = (
        "import sys, importlib; importlib.import_module(%r); "
        "bad = [m for m in ('torch',) if m in sys.modules]; "
        "print('LOADED', bad); sys.exit(1 if bad else 0)" % module
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"importing {module} imports torch:\n{res.stdout}{res.stderr}"
