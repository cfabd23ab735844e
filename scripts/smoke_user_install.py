"""Smoke test of the install a user gets: every widget opens through napari's Plugins menu.

Run with the Python of a fresh virtual environment into which only what the README tells a
user was installed (``pip install "torch==2.13.0"`` then ``pip install ".[qt]"``: no test
extras, not editable), on a screen or under Xvfb. ``.ci/run`` does exactly that.

Each widget is opened by triggering its action in the viewer's real *Plugins ▸ U-Net*
menu (what a person clicks), so the manifest, the entry point, the package data and every
module a widget imports are exercised as installed. Exit status 0 when all open; 1 with a
one-line reason per widget otherwise.
"""

from __future__ import annotations

import sys


def _menu_actions(viewer) -> dict[str, object]:
    """{widget display name: QAction} of napari-unet's entries in the Plugins menu."""
    menu = viewer.window.plugins_menu
    actions: dict[str, object] = {}
    for action in menu.actions():
        sub = action.menu()
        if sub is not None and action.text().replace("&", "") in ("U-Net", "napari-unet"):
            for a in sub.actions():
                if a.text():
                    actions[a.text().replace("&", "")] = a
    return actions


def main() -> int:
    import napari
    import npe2
    from qtpy.QtWidgets import QApplication

    import napari_unet

    print(f"napari-unet from {napari_unet.__file__}")
    manifest = npe2.PluginManifest.from_distribution("napari-unet")
    expected = [w.display_name for w in manifest.contributions.widgets]
    failures: list[str] = []
    # an exception in a Qt slot (the menu action) would abort the process without a word:
    # record it as the failure of the widget being opened instead
    sys.excepthook = lambda kind, exc, tb: failures.append(f"{current}: {kind.__name__}: {exc}")
    current = "start-up"
    viewer = napari.Viewer(show=True)
    try:
        actions = _menu_actions(viewer)
        for name in expected:
            action = actions.get(name)
            if action is None:
                failures.append(f"{name}: not in the Plugins menu (found {sorted(actions)})")
                continue
            before = set(viewer.window.dock_widgets)
            current, n_failed = name, len(failures)
            action.trigger()
            QApplication.processEvents()
            new = set(viewer.window.dock_widgets) - before
            if len(failures) > n_failed:
                continue
            if not new:
                failures.append(f"{name}: the menu entry opened no dock widget (see the log above)")
            else:
                print(f"opened {name} ({', '.join(sorted(new))})")
        viewer.open_sample("napari-unet", "nuclei")
        print(f"sample data: {[layer.name for layer in viewer.layers]}")
    finally:
        viewer.close()
    for line in failures:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
