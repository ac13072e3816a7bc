"""A third-party driver, installed as a real distribution, is found through its entry point and converts an
image against a real registry, in a fresh interpreter that never imports this project's ``drivers`` package."""
import gzip
import io
import json
import os
import subprocess
import sys

from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from tests.support.images import push_image, sha, simple_tar

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TOY_DRIVER = '''
"""toy_accel: a driver from outside the project, registered only through its entry point."""
import gzip
import hashlib

from acceleration_sdk import ConvertedLayer, LayerDriver, Option, OptionSchema
from acceleration_sdk.oci import OCI_LAYER_GZIP, Descriptor


class ToyDriver(LayerDriver):
    """Plain gzip layers carrying a mark (a test plugin)."""

    default_tag_suffix = "-toy"
    options_schema = OptionSchema(
        Option("level", int, 6, range=(1, 9), help="gzip level"),
        Option("mark", str, "toy", help="value of the org.example.toy.mark annotation"),
    )

    def name(self):
        return "toy"

    def version(self):
        return "v1"

    def convert_layer(self, content, desc):
        digest = hashlib.sha256()
        with content.open_uncompressed(desc) as tar, content.blob_writer() as out:
            with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=self.options["level"], mtime=0) as gz:
                while chunk := tar.read(1 << 16):
                    digest.update(chunk)
                    gz.write(chunk)
            committed = out.commit()
        return ConvertedLayer(Descriptor(media_type=OCI_LAYER_GZIP, digest=committed, size=out.size,
                                         annotations={"org.example.toy.mark": self.options["mark"]}),
                              "sha256:" + digest.hexdigest())
'''

CHILD = '''
import json, sys
from acceleration_sdk import AccelError, ConfigError, convert, load_config
from acceleration_sdk.driver import available

result = convert(load_config(sys.argv[1]), sys.argv[2])
errors = []
for bad in sys.argv[3:]:
    try:
        load_config(bad)
    except ConfigError as exc:
        errors.append([exc.path, str(exc)])
print(json.dumps({"target": result.target, "digest": result.digest, "driver": result.driver,
                  "available": sorted(available()), "errors": errors,
                  "drivers_modules": sorted(m for m in sys.modules if m.split(".")[0] == "drivers"),
                  "toy_loaded": "toy_accel" in sys.modules}))
'''


def install_toy_distribution(site):
    """What `pip install` leaves behind: the package plus a dist-info with METADATA, entry_points.txt, RECORD."""
    (site / "toy_accel").mkdir()
    (site / "toy_accel" / "__init__.py").write_text(TOY_DRIVER)
    info = site / "toy_accel-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-accel\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[acceleration_sdk.drivers]\ntoy = toy_accel:ToyDriver\n")
    (info / "RECORD").write_text("toy_accel/__init__.py,,\ntoy_accel-0.1.dist-info/METADATA,,\n"
                                 "toy_accel-0.1.dist-info/entry_points.txt,,\ntoy_accel-0.1.dist-info/RECORD,,\n")


def test_third_party_driver_converts_through_its_entry_point(tmp_path, registry):
    client = RegistryClient()
    repo = f"{registry.host}/plugin/app"
    layers = [simple_tar({"bin/tool": os.urandom(3000), "etc/motd": b"hello"}), simple_tar({"data": os.urandom(70_000)})]
    push_image(client, f"{repo}:v1", layers)

    site = tmp_path / "site"
    site.mkdir()
    install_toy_distribution(site)
    work = tmp_path / "work"
    good = tmp_path / "toy.yaml"  # no rules: the target tag takes the driver's own suffix
    good.write_text(f"provider: {{work_dir: {work}}}\nconverter: {{driver: {{type: toy, config: {{mark: m1}}}}}}\n")
    bad_option = tmp_path / "bad-option.yaml"
    bad_option.write_text("converter: {driver: {type: toy, config: {level: 12}}}\n")
    bad_key = tmp_path / "bad-key.yaml"
    bad_key.write_text("converter: {driver: {type: toy, config: {compression: estargz}}}\n")
    (tmp_path / "child.py").write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "ACCELD_CONFIG")}
    env["PYTHONPATH"] = str(site)  # an installed distribution on sys.path, nothing else of ours added
    out = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(good), f"{repo}:v1", str(bad_option),
                          str(bad_key)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])

    assert got["drivers_modules"] == []  # neither `drivers` nor `drivers.estargz` was imported
    assert got["toy_loaded"] and got["driver"] == "toy"
    assert {"estargz", "toy"} <= set(got["available"])
    assert got["target"] == f"{repo}:v1-toy"
    assert got["errors"] == [
        ["converter.driver.config.level", "converter.driver.config.level: expected 1..9, got 12"],
        ["converter.driver.config.compression", "converter.driver.config.compression: unknown option for toy "
                                                "(allowed: level, mark)"]]

    fetched = client.get_manifest(parse(got["target"]))
    assert fetched.digest == got["digest"]
    manifest = json.loads(fetched.raw)
    buf = io.BytesIO()
    client.download_blob(parse(repo), manifest["config"]["digest"], buf)
    config = json.loads(buf.getvalue())
    assert config["rootfs"]["diff_ids"] == [sha(tar) for tar in layers]
    for layer, tar in zip(manifest["layers"], layers):
        assert layer["annotations"]["org.example.toy.mark"] == "m1"
        blob = io.BytesIO()
        client.download_blob(parse(repo), layer["digest"], blob)
        assert gzip.decompress(blob.getvalue()) == tar

    # accelctl shows the plugin's schema and suffix, read from the plugin itself
    listing = subprocess.run([sys.executable, "-m", "acceleration_sdk.cli", "drivers", "toy"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines() == [
        "  toy: Plain gzip layers carrying a mark (a test plugin).",
        "    default tag suffix -toy; from toy_accel:ToyDriver",
        "    options (converter.driver.config):",
        "      level (int, default 6, 1..9): gzip level",
        "      mark (str, default toy): value of the org.example.toy.mark annotation",
    ]
