"""How a nydus image names its layers (nydus-snapshotter's pkg/converter; /work/shared/NYDUS.md section 3).

Shared by the driver, which writes them, and the checker (``.check``), which recognises and verifies them.
"""

NYDUS_BLOB = "application/vnd.oci.image.layer.nydus.blob.v1"
BLOB_ANNOTATION = "containerd.io/snapshot/nydus-blob"
BOOTSTRAP_ANNOTATION = "containerd.io/snapshot/nydus-bootstrap"
FS_VERSION_ANNOTATION = "containerd.io/snapshot/nydus-fs-version"
BOOTSTRAP_DIR = "image"  # the bootstrap layer's tar holds image/image.boot
