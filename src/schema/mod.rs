//! Protobuf descriptors at run time: `.proto` sources compiled in-process (protox),
//! FileDescriptorSet files, and files fetched from upstream reflection services, all in
//! one `DescriptorPool`. `google/api/*`, `google/rpc/*` and the well-known types are built
//! in, so operators need not ship them.

pub mod reflection;

use crate::config::{LoadErrors, Location};
use bytes::Buf;
use prost::Message;
use prost_reflect::{DescriptorPool, ExtensionDescriptor, MessageDescriptor};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The protos Switchboard carries itself (wire-compatible copies of googleapis files).
const BUILTIN_PROTOS: &[(&str, &str)] = &[
    (
        "google/api/http.proto",
        include_str!("../../proto/google/api/http.proto"),
    ),
    (
        "google/api/annotations.proto",
        include_str!("../../proto/google/api/annotations.proto"),
    ),
    (
        "google/api/httpbody.proto",
        include_str!("../../proto/google/api/httpbody.proto"),
    ),
    (
        "google/rpc/status.proto",
        include_str!("../../proto/google/rpc/status.proto"),
    ),
    (
        "google/rpc/error_details.proto",
        include_str!("../../proto/google/rpc/error_details.proto"),
    ),
];

/// File extensions read as encoded FileDescriptorSets.
pub const DESCRIPTOR_SET_EXTENSIONS: &[&str] = &["binpb", "pb", "desc"];

/// The descriptors every route is resolved against.
#[derive(Clone, Debug)]
pub struct Schema {
    pub pool: DescriptorPool,
    /// `google.api.http`, to read HttpRule annotations.
    pub http_rule: ExtensionDescriptor,
    /// `google.rpc.Status`, to render error details.
    pub status: MessageDescriptor,
}

impl Schema {
    /// A pool holding only the built-in files.
    pub fn builtin() -> Self {
        let mut pool = DescriptorPool::new();
        add_descriptor_set(&mut pool, builtin_descriptor_set())
            .expect("built-in descriptors are valid");
        Self::from_pool(pool).expect("built-in descriptors define google.api.http")
    }

    fn from_pool(pool: DescriptorPool) -> Option<Self> {
        Some(Self {
            http_rule: pool.get_extension_by_name("google.api.http")?,
            status: pool.get_message_by_name("google.rpc.Status")?,
            pool,
        })
    }

    /// Loads every file under `paths` (`.proto` compiled, descriptor sets decoded) on top
    /// of the built-ins, plus `extra` encoded FileDescriptorProtos (from reflection).
    pub fn load(paths: &[PathBuf], extra: &[bytes::Bytes]) -> Result<Self, LoadErrors> {
        let mut errors = LoadErrors::default();
        let mut exts = vec!["proto"];
        exts.extend_from_slice(DESCRIPTOR_SET_EXTENSIONS);
        let files = crate::config::collect_files(paths, &exts, &mut errors);

        let mut pool = Self::builtin().pool;
        let (protos, sets): (Vec<_>, Vec<_>) = files
            .iter()
            .partition(|f| f.extension().is_some_and(|e| e == "proto"));

        if !protos.is_empty() {
            match compile_protos(paths, &protos) {
                Ok(set) => {
                    if let Err(e) = add_descriptor_set(&mut pool, &set) {
                        errors.push(Location::new(protos[0], 0), e);
                    }
                }
                Err(e) => errors.0.push(e),
            }
        }
        for path in sets {
            let result = std::fs::read(path)
                .map_err(|e| format!("cannot read: {e}"))
                .and_then(|bytes| add_descriptor_set(&mut pool, &bytes));
            if let Err(e) = result {
                errors.push(Location::new(path, 0), e);
            }
        }
        for file in extra {
            if let Err(e) = add_file(&mut pool, file) {
                errors.push(Location::default(), format!("reflected descriptor: {e}"));
            }
        }
        errors.into_result(())?;
        Ok(Self::from_pool(pool).expect("built-ins are in the pool"))
    }
}

/// The built-in files compiled once per process.
fn builtin_descriptor_set() -> &'static [u8] {
    static SET: OnceLock<Vec<u8>> = OnceLock::new();
    SET.get_or_init(|| {
        let mut compiler = protox::Compiler::with_file_resolver(builtin_resolver());
        compiler.include_imports(true);
        let well_known = [
            "google/protobuf/any.proto",
            "google/protobuf/duration.proto",
            "google/protobuf/empty.proto",
            "google/protobuf/field_mask.proto",
            "google/protobuf/struct.proto",
            "google/protobuf/timestamp.proto",
            "google/protobuf/wrappers.proto",
        ];
        for name in BUILTIN_PROTOS
            .iter()
            .map(|(name, _)| *name)
            .chain(well_known)
        {
            compiler.open_file(name).expect("built-in protos compile");
        }
        compiler.encode_file_descriptor_set()
    })
}

/// Resolves the built-in googleapis files, then the well-known types.
fn builtin_resolver() -> protox::file::ChainFileResolver {
    struct Builtin;
    impl protox::file::FileResolver for Builtin {
        fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
            match BUILTIN_PROTOS.iter().find(|(n, _)| *n == name) {
                Some((name, source)) => protox::file::File::from_source(name, source),
                None => Err(protox::Error::file_not_found(name)),
            }
        }
    }
    let mut chain = protox::file::ChainFileResolver::new();
    chain.add(Builtin);
    chain.add(protox::file::GoogleFileResolver::new());
    chain
}

/// Compiles `.proto` files; imports resolve against every configured folder (and each
/// listed file's own folder). Built-ins win over operator copies of the same name.
fn compile_protos(
    paths: &[PathBuf],
    protos: &[&PathBuf],
) -> Result<Vec<u8>, crate::config::LoadError> {
    let mut chain = builtin_resolver();
    let mut includes: Vec<PathBuf> = Vec::new();
    for path in paths {
        let dir = if path.is_dir() {
            path.clone()
        } else {
            path.parent().map(Path::to_path_buf).unwrap_or_default()
        };
        if !includes.contains(&dir) {
            includes.push(dir);
        }
    }
    for dir in &includes {
        chain.add(protox::file::IncludeFileResolver::new(dir.clone()));
    }
    let mut compiler = protox::Compiler::with_file_resolver(chain);
    compiler.include_imports(true).include_source_info(true);
    for proto in protos {
        // An operator's copy of a built-in file is accepted and ignored.
        if let Some(name) = includes
            .iter()
            .find_map(|dir| proto.strip_prefix(dir).ok())
            .and_then(|rel| rel.to_str())
            && BUILTIN_PROTOS
                .iter()
                .any(|(n, _)| *n == name.replace('\\', "/"))
        {
            continue;
        }
        compiler
            .open_file(proto)
            .map_err(|e| protox_error(e, proto, &includes))?;
    }
    Ok(compiler.encode_file_descriptor_set())
}

/// A protox error as `path:line: message`.
fn protox_error(
    error: protox::Error,
    opened: &Path,
    includes: &[PathBuf],
) -> crate::config::LoadError {
    use miette::Diagnostic;
    let file = error
        .file()
        .and_then(|name| {
            includes
                .iter()
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| opened.to_path_buf());
    let line = error
        .labels()
        .and_then(|mut labels| labels.next())
        .and_then(|label| {
            let text = std::fs::read_to_string(&file).ok()?;
            let offset = label.offset().min(text.len());
            Some(text[..offset].matches('\n').count() as u64 + 1)
        })
        .unwrap_or(0);
    crate::config::LoadError::new(Location::new(file, line), error.to_string())
}

/// Adds each file of an encoded FileDescriptorSet that the pool does not hold yet.
/// Files are decoded from their raw bytes so custom options (google.api.http) survive.
pub fn add_descriptor_set(pool: &mut DescriptorPool, mut set: &[u8]) -> Result<(), String> {
    while set.has_remaining() {
        let key = prost::encoding::decode_varint(&mut set).map_err(|e| e.to_string())?;
        let (field, wire_type) = (key >> 3, key & 7);
        if field == 1 && wire_type == 2 {
            let len = prost::encoding::decode_varint(&mut set).map_err(|e| e.to_string())? as usize;
            if len > set.len() {
                return Err("truncated FileDescriptorSet".into());
            }
            let (file, rest) = set.split_at(len);
            add_file(pool, file)?;
            set = rest;
        } else {
            return Err("not a FileDescriptorSet".into());
        }
    }
    Ok(())
}

/// Adds one encoded FileDescriptorProto unless a file of that name is already present.
pub fn add_file(pool: &mut DescriptorPool, bytes: &[u8]) -> Result<(), String> {
    let name = prost_types::FileDescriptorProto::decode(bytes)
        .map_err(|e| format!("invalid FileDescriptorProto: {e}"))?
        .name
        .unwrap_or_default();
    if pool.get_file_by_name(&name).is_some() {
        return Ok(());
    }
    pool.decode_file_descriptor_proto(bytes)
        .map_err(|e| format!("{name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_hold_http_rule_and_status() {
        let schema = Schema::builtin();
        assert_eq!(schema.http_rule.full_name(), "google.api.http");
        assert!(
            schema
                .pool
                .get_message_by_name("google.rpc.ErrorInfo")
                .is_some()
        );
        assert!(
            schema
                .pool
                .get_message_by_name("google.protobuf.Timestamp")
                .is_some()
        );
    }

    #[test]
    fn proto_errors_point_at_file_and_line() {
        let dir = std::env::temp_dir().join(format!("sb-schema-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("bad.proto"),
            "syntax = \"proto3\";\npackage x;\nmessage A {\n  strin name = 1;\n}\n",
        )
        .unwrap();
        let err = Schema::load(std::slice::from_ref(&dir), &[]).unwrap_err();
        let first = &err.0[0];
        assert!(first.location.file.ends_with("bad.proto"), "{err}");
        assert_eq!(first.location.line, 4, "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
