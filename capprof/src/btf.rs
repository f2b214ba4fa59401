//! A small reader for kernel BTF (`/sys/kernel/btf/vmlinux`).
//!
//! capprof needs a handful of facts the eBPF program cannot learn by itself, because Rust emits no
//! CO-RE relocations: a few field offsets and the signature of `cap_capable`. This module reads
//! just enough of the BTF format (`include/uapi/linux/btf.h`) to answer those questions: named
//! structs with their members, and functions with their parameter names and types.

use std::{collections::HashMap, path::Path};

/// Where the running kernel publishes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;

// Kinds from `include/uapi/linux/btf.h`.
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Errors reading BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "cannot read kernel BTF at {path}: {source} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)"
    )]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no {kind} named `{name}`")]
    NotFound { kind: &'static str, name: String },
    #[error("`{ty}` has no member `{member}` in kernel BTF")]
    NoMember { ty: String, member: String },
}

/// One BTF type, reduced to what capprof asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Type {
    /// A struct or union with its members: (name, bit offset, type id).
    Composite { members: Vec<(String, u32, u32)> },
    /// A `FUNC`: points at its `FUNC_PROTO`.
    Func { proto: u32 },
    /// A `FUNC_PROTO` with its parameters: (name, type id).
    FuncProto { params: Vec<(String, u32)> },
    /// A type that refers to another one (pointer, typedef, const, volatile ...).
    Reference { kind: u32, target: u32 },
    /// A base integer type and its size in bytes.
    Int { size: u32 },
    /// Anything capprof never needs to look into.
    Other,
}

/// The parsed types of one BTF blob, indexed by name for structs and functions.
#[derive(Debug)]
pub struct Btf {
    /// Type id `i` is `types[i]`; id 0 is `void`.
    types: Vec<Type>,
    names: Vec<String>,
    structs: HashMap<String, u32>,
    funcs: HashMap<String, u32>,
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn from_kernel() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    /// Reads a BTF blob from a file.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let bytes = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&bytes)
    }

    /// Parses a raw (little- or big-endian) BTF blob.
    pub fn parse(bytes: &[u8]) -> Result<Self, BtfError> {
        let mut reader = Reader::new(bytes)?;
        let header_len = reader.u32_at(4)? as usize;
        let type_off = reader.u32_at(8)? as usize;
        let type_len = reader.u32_at(12)? as usize;
        let str_off = reader.u32_at(16)? as usize;
        let str_len = reader.u32_at(20)? as usize;
        let types_start = header_len
            .checked_add(type_off)
            .ok_or(BtfError::Malformed("type section offset overflows"))?;
        let strings_start = header_len
            .checked_add(str_off)
            .ok_or(BtfError::Malformed("string section offset overflows"))?;
        let strings = bytes
            .get(strings_start..strings_start.saturating_add(str_len))
            .ok_or(BtfError::Malformed("string section out of bounds"))?;
        let string_at = |offset: u32| -> Result<String, BtfError> {
            let tail = strings
                .get(offset as usize..)
                .ok_or(BtfError::Malformed("string offset out of bounds"))?;
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            Ok(String::from_utf8_lossy(&tail[..end]).into_owned())
        };

        let mut btf = Btf {
            types: vec![Type::Other],
            names: vec![String::new()],
            structs: HashMap::new(),
            funcs: HashMap::new(),
        };
        let end = types_start
            .checked_add(type_len)
            .ok_or(BtfError::Malformed("type section length overflows"))?;
        reader.pos = types_start;
        while reader.pos < end {
            let name_off = reader.next_u32()?;
            let info = reader.next_u32()?;
            let size_or_type = reader.next_u32()?;
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let kind_flag = info >> 31;
            let name = string_at(name_off)?;
            let id = btf.types.len() as u32;
            let ty = match kind {
                KIND_INT => {
                    reader.skip(4)?;
                    Type::Int { size: size_or_type }
                }
                KIND_PTR | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_TYPE_TAG => Type::Reference {
                    kind,
                    target: size_or_type,
                },
                KIND_ARRAY => {
                    reader.skip(12)?;
                    Type::Other
                }
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen as usize);
                    for _ in 0..vlen {
                        let member_name = string_at(reader.next_u32()?)?;
                        let member_type = reader.next_u32()?;
                        let offset = reader.next_u32()?;
                        // With kind_flag set, the high 8 bits hold the bitfield size.
                        let bit_offset = if kind_flag == 1 {
                            offset & 0x00ff_ffff
                        } else {
                            offset
                        };
                        members.push((member_name, bit_offset, member_type));
                    }
                    if kind == KIND_STRUCT && !name.is_empty() {
                        btf.structs.entry(name.clone()).or_insert(id);
                    }
                    Type::Composite { members }
                }
                KIND_ENUM => {
                    reader.skip(8 * vlen as usize)?;
                    Type::Other
                }
                KIND_ENUM64 => {
                    reader.skip(12 * vlen as usize)?;
                    Type::Other
                }
                KIND_FUNC => {
                    if !name.is_empty() {
                        btf.funcs.entry(name.clone()).or_insert(id);
                    }
                    Type::Func {
                        proto: size_or_type,
                    }
                }
                KIND_FUNC_PROTO => {
                    let mut params = Vec::with_capacity(vlen as usize);
                    for _ in 0..vlen {
                        let param_name = string_at(reader.next_u32()?)?;
                        params.push((param_name, reader.next_u32()?));
                    }
                    Type::FuncProto { params }
                }
                KIND_VAR => {
                    reader.skip(4)?;
                    Type::Other
                }
                KIND_DATASEC => {
                    reader.skip(12 * vlen as usize)?;
                    Type::Other
                }
                KIND_DECL_TAG => {
                    reader.skip(4)?;
                    Type::Other
                }
                KIND_FWD | KIND_FLOAT => Type::Other,
                _ => return Err(BtfError::Malformed("unknown BTF kind")),
            };
            btf.types.push(ty);
            btf.names.push(name);
        }
        Ok(btf)
    }

    /// Byte offset of `member` in `struct type_name`, looking through anonymous structs and unions.
    pub fn member_offset(&self, type_name: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .structs
            .get(type_name)
            .ok_or_else(|| BtfError::NotFound {
                kind: "struct",
                name: type_name.to_owned(),
            })?;
        self.find_member_bits(id, member, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember {
                ty: format!("struct {type_name}"),
                member: member.to_owned(),
            })
    }

    fn find_member_bits(&self, id: u32, member: &str, base_bits: u32) -> Option<u32> {
        let Type::Composite { members } = self.types.get(id as usize)? else {
            return None;
        };
        for (name, bits, _) in members {
            if name == member {
                return Some(base_bits + bits);
            }
        }
        for (name, bits, ty) in members {
            if name.is_empty()
                && let Some(found) =
                    self.find_member_bits(self.strip_modifiers(*ty), member, base_bits + bits)
            {
                return Some(found);
            }
        }
        None
    }

    /// The parameters of function `name`: each parameter's name and its type spelled C-like
    /// (`unsigned int`, `struct cred *`, ...).
    pub fn function_params(&self, name: &str) -> Result<Vec<(String, String)>, BtfError> {
        let not_found = || BtfError::NotFound {
            kind: "function",
            name: name.to_owned(),
        };
        let id = *self.funcs.get(name).ok_or_else(not_found)?;
        let Some(Type::Func { proto }) = self.types.get(id as usize) else {
            return Err(not_found());
        };
        let Some(Type::FuncProto { params }) = self.types.get(*proto as usize) else {
            return Err(BtfError::Malformed("FUNC does not point at a FUNC_PROTO"));
        };
        Ok(params
            .iter()
            .map(|(param, ty)| (param.clone(), self.type_name(*ty)))
            .collect())
    }

    /// Whether the kernel has a function (or a BTF tracepoint typedef, `btf_trace_<name>`) so named.
    pub fn has_function(&self, name: &str) -> bool {
        self.funcs.contains_key(name)
    }

    /// Whether a typedef of this name exists (the kernel declares `btf_trace_<tracepoint>` typedefs
    /// for every BTF-enabled tracepoint).
    pub fn has_typedef(&self, name: &str) -> bool {
        self.types.iter().zip(&self.names).any(|(ty, ty_name)| {
            matches!(
                ty,
                Type::Reference {
                    kind: KIND_TYPEDEF,
                    ..
                }
            ) && ty_name == name
        })
    }

    /// Size in bytes of an integer type reached through typedefs and modifiers.
    pub fn int_size(&self, id: u32) -> Option<u32> {
        match self.types.get(self.strip_modifiers(id) as usize)? {
            Type::Int { size } => Some(*size),
            _ => None,
        }
    }

    fn strip_modifiers(&self, mut id: u32) -> u32 {
        while let Some(Type::Reference { kind, target }) = self.types.get(id as usize) {
            if *kind == KIND_PTR {
                break;
            }
            id = *target;
        }
        id
    }

    fn type_name(&self, id: u32) -> String {
        match self.types.get(id as usize) {
            None => "?".to_owned(),
            Some(_) if id == 0 => "void".to_owned(),
            Some(Type::Reference {
                kind: KIND_PTR,
                target,
            }) => format!("{} *", self.type_name(*target)),
            Some(Type::Reference {
                kind: KIND_CONST,
                target,
            }) => format!("const {}", self.type_name(*target)),
            Some(Type::Reference {
                kind: KIND_VOLATILE,
                target,
            }) => {
                format!("volatile {}", self.type_name(*target))
            }
            Some(Type::Reference {
                kind: KIND_TYPEDEF, ..
            })
            | Some(Type::Int { .. }) => self.names[id as usize].clone(),
            Some(Type::Reference { target, .. }) => self.type_name(*target),
            Some(Type::Composite { .. }) => format!("struct {}", self.names[id as usize]),
            Some(_) => self.names[id as usize].clone(),
        }
    }
}

/// Reads native-endian `u32`s, detecting the blob's byte order from its magic.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    big_endian: bool,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Result<Self, BtfError> {
        let magic = bytes
            .get(..2)
            .ok_or(BtfError::Malformed("shorter than a header"))?;
        let big_endian = match u16::from_le_bytes([magic[0], magic[1]]) {
            BTF_MAGIC => false,
            m if m.swap_bytes() == BTF_MAGIC => true,
            _ => return Err(BtfError::Malformed("bad magic")),
        };
        Ok(Self {
            bytes,
            pos: 0,
            big_endian,
        })
    }

    fn u32_at(&self, pos: usize) -> Result<u32, BtfError> {
        let raw: [u8; 4] = self
            .bytes
            .get(pos..pos + 4)
            .and_then(|s| s.try_into().ok())
            .ok_or(BtfError::Malformed("truncated"))?;
        Ok(if self.big_endian {
            u32::from_be_bytes(raw)
        } else {
            u32::from_le_bytes(raw)
        })
    }

    fn next_u32(&mut self) -> Result<u32, BtfError> {
        let value = self.u32_at(self.pos)?;
        self.pos += 4;
        Ok(value)
    }

    fn skip(&mut self, len: usize) -> Result<(), BtfError> {
        if self.pos + len > self.bytes.len() {
            return Err(BtfError::Malformed("truncated"));
        }
        self.pos += len;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// BTF declaring `int cap_capable(...)` with int parameters of these names, as kernels
    /// before and after Linux 5.1 differ (`int audit`, `unsigned int opts`).
    pub(crate) fn cap_capable_with_params(names: &[&str]) -> Btf {
        let mut b = Builder::new();
        b.ty("int", KIND_INT, 0, false, 4, &[0x0100_0020]);
        let mut params = Vec::new();
        for name in names {
            params.extend([b.string(name), 1]);
        }
        b.ty("", KIND_FUNC_PROTO, names.len() as u32, false, 1, &params);
        b.ty("cap_capable", KIND_FUNC, 0, false, 2, &[]);
        Btf::parse(&b.finish()).expect("cap_capable BTF parses")
    }

    /// Builds a little-endian BTF blob from (name, info, size_or_type, extra words) entries.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
    }

    impl Builder {
        fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
            }
        }
        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }
        fn ty(
            &mut self,
            name: &str,
            kind: u32,
            vlen: u32,
            kind_flag: bool,
            size_or_type: u32,
            extra: &[u32],
        ) {
            let name = self.string(name);
            let info = (kind << 24) | vlen | if kind_flag { 1 << 31 } else { 0 };
            for word in [name, info, size_or_type].iter().chain(extra) {
                self.types.extend_from_slice(&word.to_le_bytes());
            }
        }
        fn finish(self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for word in [
                24,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&word.to_le_bytes());
            }
            out.extend(self.types);
            out.extend(self.strings);
            out
        }
    }

    fn sample() -> Btf {
        let mut b = Builder::new();
        // 1: int, 2: unsigned int, 3: struct cred, 4: const struct cred *, 5: struct task_struct
        b.ty("int", KIND_INT, 0, false, 4, &[0x0100_0020]);
        b.ty("unsigned int", KIND_INT, 0, false, 4, &[32]);
        let uid = b.string("euid");
        b.ty("cred", KIND_STRUCT, 1, false, 8, &[uid, 2, 32]);
        b.ty("", KIND_PTR, 0, false, 3, &[]);
        let inner = b.string("real_cred");
        // 5: anonymous struct holding real_cred at bit 64; 6: task_struct with it at bit 128.
        b.ty("", KIND_STRUCT, 1, false, 16, &[inner, 4, 64]);
        let flags = b.string("flags");
        b.ty(
            "task_struct",
            KIND_STRUCT,
            2,
            true,
            64,
            &[flags, 2, (4 << 24) | 32, 0, 5, 128],
        );
        // 7: proto (cred, cap, opts) -> int; 8: func cap_capable
        let (p1, p2, p3) = (b.string("cred"), b.string("cap"), b.string("opts"));
        b.ty("", KIND_FUNC_PROTO, 3, false, 1, &[p1, 4, p2, 1, p3, 2]);
        b.ty("cap_capable", KIND_FUNC, 0, false, 7, &[]);
        b.ty("btf_trace_cap_capable", KIND_TYPEDEF, 0, false, 4, &[]);
        Btf::parse(&b.finish()).expect("sample BTF parses")
    }

    #[test]
    fn member_offsets_look_through_anonymous_members_and_bitfields() {
        let btf = sample();
        assert_eq!(btf.member_offset("cred", "euid").unwrap(), 4);
        assert_eq!(btf.member_offset("task_struct", "flags").unwrap(), 4);
        assert_eq!(btf.member_offset("task_struct", "real_cred").unwrap(), 24);
        assert!(matches!(
            btf.member_offset("task_struct", "nope"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("mm_struct", "x"),
            Err(BtfError::NotFound { .. })
        ));
    }

    #[test]
    fn function_params_are_named_and_typed() {
        let btf = sample();
        let params = btf.function_params("cap_capable").unwrap();
        assert_eq!(
            params,
            vec![
                ("cred".to_owned(), "struct cred *".to_owned()),
                ("cap".to_owned(), "int".to_owned()),
                ("opts".to_owned(), "unsigned int".to_owned()),
            ]
        );
        assert!(btf.has_typedef("btf_trace_cap_capable"));
        assert!(!btf.has_typedef("btf_trace_nothing"));
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(matches!(
            Btf::parse(&[1, 2, 3]),
            Err(BtfError::Malformed(_))
        ));
        assert!(matches!(Btf::parse(&[]), Err(BtfError::Malformed(_))));
    }

    #[test]
    fn reads_the_running_kernel_when_it_has_btf() {
        let btf = match Btf::from_kernel() {
            Ok(btf) => btf,
            Err(error) => {
                crate::test_support::skip_unless_ci(&format!("{VMLINUX_BTF}: {error}"));
                return;
            }
        };
        let real_cred = btf.member_offset("task_struct", "real_cred").unwrap();
        assert!(real_cred > 0);
        let params = btf.function_params("cap_capable").unwrap();
        assert_eq!(params.len(), 4, "{params:?}");
    }
}
