//! The plugin as an OCI image, in the one shape both Istio (`WasmPlugin`
//! `url: oci://…`) and Envoy Gateway (`code.type: Image`) pull: a single
//! image manifest (not an index) whose last and only layer is
//! `application/vnd.oci.image.layer.v1.tar+gzip`, a gzipped tar holding one
//! file, `plugin.wasm`. (Both refuse the CNCF wasm artifact with an
//! `application/wasm` layer, and an uncompressed tar layer.)
//!
//! The image is a pure function of the `.wasm` bytes, so the same file gives
//! the same manifest digest on every machine: the tar entry has mtime 0, uid
//! and gid 0, mode 0644 and no user or group names; the gzip header has no
//! timestamp and a fixed OS byte, and the compressor is flate2's pure-Rust
//! backend at level 9 (pinned by a test vector below, so a dependency update
//! that compresses differently fails a test instead of moving digests); the
//! config blob has no creation time; every JSON document is written compact,
//! keys in a fixed order. The manifest digest is what Istio's and Envoy
//! Gateway's `sha256` fields take (its hex) and what `@sha256:` names.
//!
//! [`Image::write_layout`] writes an OCI image layout directory; [`push()`]
//! sends the image to a registry.

use std::io::Write;
use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

mod push;

pub use push::{push, Credentials, PushOptions, Pushed};

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The file name Istio and Envoy Gateway look for in the layer.
pub const WASM_FILE_NAME: &str = "plugin.wasm";
/// The tag annotation of an image layout's `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// A content-addressed blob: its bytes and `sha256:<hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub media_type: &'static str,
    pub bytes: Vec<u8>,
    pub digest: String,
}

impl Blob {
    fn new(media_type: &'static str, bytes: Vec<u8>) -> Blob {
        let digest = sha256_digest(&bytes);
        Blob {
            media_type,
            bytes,
            digest,
        }
    }

    /// The hex part of the digest (what a layout names the blob's file).
    pub fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap_or(&self.digest)
    }

    /// The OCI descriptor of this blob.
    fn descriptor(&self) -> serde_json::Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.bytes.len(),
        })
    }
}

/// `sha256:<lower-case hex>` of these bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut text = String::with_capacity(7 + 64);
    text.push_str("sha256:");
    for byte in hash {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// Why an image could not be made, written or pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageError(pub String);

impl std::fmt::Display for ImageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ImageError {}

/// The plugin's image: the layer, the config and the manifest that names
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub layer: Blob,
    pub config: Blob,
    pub manifest: Blob,
}

impl Image {
    /// The image of this `.wasm`. Refuses bytes that are not a WebAssembly
    /// module (they do not start with `\0asm`); `what` names them in the
    /// message (the file's path).
    pub fn from_wasm(wasm: &[u8], what: &str) -> Result<Image, ImageError> {
        if !wasm.starts_with(b"\0asm") {
            return Err(ImageError(format!(
                "{what}: not a WebAssembly module (a .wasm starts with the bytes \\0asm); build the plugin with \
                 cargo build --release --target wasm32-wasip1 -p graylane"
            )));
        }
        let tar = layer_tar(wasm)
            .map_err(|e| ImageError(format!("{what}: cannot make the tar layer: {e}")))?;
        let diff_id = sha256_digest(&tar);
        let gzipped =
            gzip(&tar).map_err(|e| ImageError(format!("{what}: cannot gzip the layer: {e}")))?;
        let layer = Blob::new(LAYER_MEDIA_TYPE, gzipped);
        // linux/amd64: what a `FROM scratch` image built on a usual machine
        // says, and the platform Istio picks when it meets an index. No
        // `created`: it would change the digest on every build.
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        });
        let config = Blob::new(CONFIG_MEDIA_TYPE, compact(&config)?);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": config.descriptor(),
            "layers": [layer.descriptor()],
        });
        let manifest = Blob::new(MANIFEST_MEDIA_TYPE, compact(&manifest)?);
        Ok(Image {
            layer,
            config,
            manifest,
        })
    }

    /// Reads the `.wasm` at `path` and makes its image.
    pub fn from_file(path: &Path) -> Result<Image, ImageError> {
        let wasm = std::fs::read(path)
            .map_err(|e| ImageError(format!("{}: cannot read: {e}", path.display())))?;
        Image::from_wasm(&wasm, &path.display().to_string())
    }

    /// The manifest digest, `sha256:<hex>`: the image's identity.
    pub fn digest(&self) -> &str {
        &self.manifest.digest
    }

    /// Writes an OCI image layout into `dir` (created if missing): the
    /// `oci-layout` marker, `index.json` naming the manifest (with `tag` as
    /// its `org.opencontainers.image.ref.name`) and the three blobs under
    /// `blobs/sha256/`. An `index.json` already there is replaced; other
    /// blobs are left alone.
    pub fn write_layout(&self, dir: &Path, tag: &str) -> Result<(), ImageError> {
        let at = |path: &Path, e: std::io::Error| ImageError(format!("{}: {e}", path.display()));
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(|e| at(&blobs, e))?;
        for blob in [&self.layer, &self.config, &self.manifest] {
            let path = blobs.join(blob.hex());
            std::fs::write(&path, &blob.bytes).map_err(|e| at(&path, e))?;
        }
        let mut descriptor = self.manifest.descriptor();
        if let Some(object) = descriptor.as_object_mut() {
            object.insert("annotations".into(), json!({ REF_NAME_ANNOTATION: tag }));
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [descriptor],
        });
        let path = dir.join("index.json");
        std::fs::write(&path, compact(&index)?).map_err(|e| at(&path, e))?;
        let path = dir.join("oci-layout");
        std::fs::write(&path, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(|e| at(&path, e))?;
        Ok(())
    }
}

fn compact(value: &serde_json::Value) -> Result<Vec<u8>, ImageError> {
    serde_json::to_vec(value).map_err(|e| ImageError(format!("cannot write JSON: {e}")))
}

/// A tar holding `plugin.wasm` with fixed metadata (ustar, as Go's
/// archive/tar and every image tool read it).
fn layer_tar(wasm: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut header = tar::Header::new_ustar();
    header.set_path(WASM_FILE_NAME)?;
    header.set_size(wasm.len() as u64);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, wasm)?;
    builder.into_inner()
}

/// gzip with no name, no timestamp, OS byte 255 (unknown), level 9.
fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes)?;
    encoder.finish()
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]

    use std::io::Read;

    use super::*;

    /// A small valid module: the header and an empty custom section.
    const TINY: &[u8] = b"\0asm\x01\0\0\0\0\x05\x04test";

    #[test]
    fn the_layer_is_a_gzipped_tar_of_plugin_wasm_with_fixed_metadata() {
        let image = Image::from_wasm(TINY, "tiny.wasm").unwrap();
        let gz = &image.layer.bytes;
        // gzip: magic, deflate, no flags, mtime 0, OS 255.
        assert_eq!(&gz[..4], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(&gz[4..8], &[0, 0, 0, 0]);
        assert_eq!(gz[9], 255);
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut tar_bytes)
            .unwrap();
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let mut entries = archive.entries().unwrap();
        let mut entry = entries.next().unwrap().unwrap();
        let header = entry.header().clone();
        assert_eq!(header.path().unwrap().to_str(), Some("plugin.wasm"));
        assert_eq!(header.mode().unwrap(), 0o644);
        assert_eq!(header.mtime().unwrap(), 0);
        assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (0, 0));
        assert_eq!(header.username().unwrap(), Some(""));
        assert_eq!(header.groupname().unwrap(), Some(""));
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        assert_eq!(content, TINY);
        assert!(entries.next().is_none());
    }

    #[test]
    fn the_manifest_names_the_config_and_one_tar_gzip_layer() {
        let image = Image::from_wasm(TINY, "tiny.wasm").unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(&image.manifest.bytes).unwrap();
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["mediaType"], MANIFEST_MEDIA_TYPE);
        assert_eq!(manifest["config"]["mediaType"], CONFIG_MEDIA_TYPE);
        assert_eq!(manifest["config"]["digest"], image.config.digest.as_str());
        assert_eq!(manifest["config"]["size"], image.config.bytes.len());
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0]["mediaType"], LAYER_MEDIA_TYPE);
        assert_eq!(layers[0]["digest"], image.layer.digest.as_str());
        let config: serde_json::Value = serde_json::from_slice(&image.config.bytes).unwrap();
        assert!(config.get("created").is_none());
        assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);
        assert_eq!(image.digest(), sha256_digest(&image.manifest.bytes));
    }

    /// Frozen: the digest of TINY's image. If a dependency update (tar,
    /// flate2's compressor, serde_json) changes it, every published digest
    /// of a rebuilt release would move: find out why before updating this.
    #[test]
    fn the_digest_is_a_pure_function_of_the_wasm() {
        let first = Image::from_wasm(TINY, "tiny.wasm").unwrap();
        let copy = TINY.to_owned();
        let second = Image::from_wasm(&copy, "again.wasm").unwrap();
        assert_eq!(first, second);
        assert_eq!(
            first.digest(),
            "sha256:a0185db87bb6646dff8b611945b559125b64c8168ee8648c4b9c7ad58c9745f1"
        );
        let other = Image::from_wasm(b"\0asm\x01\0\0\0", "other.wasm").unwrap();
        assert_ne!(first.digest(), other.digest());
    }

    #[test]
    fn a_file_that_is_not_wasm_is_refused_with_its_name() {
        let error = Image::from_wasm(b"#!/bin/sh\n", "target/graylane").unwrap_err();
        assert!(
            error
                .0
                .starts_with("target/graylane: not a WebAssembly module"),
            "{error}"
        );
    }

    #[test]
    fn the_layout_holds_the_blobs_and_an_index_naming_the_manifest() {
        let dir = std::env::temp_dir().join(format!("graylane-layout-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let image = Image::from_wasm(TINY, "tiny.wasm").unwrap();
        image.write_layout(&dir, "0.1.0").unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"][0]["digest"], image.digest());
        assert_eq!(
            index["manifests"][0]["annotations"][REF_NAME_ANNOTATION],
            "0.1.0"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("oci-layout")).unwrap(),
            r#"{"imageLayoutVersion":"1.0.0"}"#
        );
        for blob in [&image.layer, &image.config, &image.manifest] {
            let bytes = std::fs::read(dir.join("blobs/sha256").join(blob.hex())).unwrap();
            assert_eq!(sha256_digest(&bytes), blob.digest);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
