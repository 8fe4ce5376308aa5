//! Switchboard's contracts, generated from `proto/switchboard/<domain>/v1/*.proto`.
//!
//! Every payload on the bus and every gRPC message is defined once here. The serde
//! impls follow the proto3 canonical JSON mapping (camelCase field names, enums as
//! their names, 64-bit integers as strings, `Timestamp` as RFC 3339), so the JSON a
//! NATS subscriber reads is the JSON of the message a gRPC client sees.

#![allow(missing_docs)]

/// The encoded `FileDescriptorSet` of every Switchboard proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/switchboard_descriptor.bin"));

macro_rules! proto_module {
    ($domain:ident, $package:literal) => {
        #[doc = concat!("`", $package, "`")]
        pub mod $domain {
            #[doc = concat!("`", $package, "`")]
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/", $package, ".rs"));
                include!(concat!(env!("OUT_DIR"), "/", $package, ".serde.rs"));
            }
        }
    };
}

proto_module!(common, "switchboard.common.v1");
proto_module!(ami, "switchboard.ami.v1");
proto_module!(im, "switchboard.im.v1");
proto_module!(push, "switchboard.push.v1");
proto_module!(chat, "switchboard.chat.v1");
proto_module!(hook, "switchboard.hook.v1");

/// The fully qualified names of the five gRPC services, as reflection lists them.
pub mod service_names {
    /// `switchboard.ami.v1.AmiService`
    pub const AMI: &str = "switchboard.ami.v1.AmiService";
    /// `switchboard.im.v1.ImService`
    pub const IM: &str = "switchboard.im.v1.ImService";
    /// `switchboard.push.v1.PushService`
    pub const PUSH: &str = "switchboard.push.v1.PushService";
    /// `switchboard.chat.v1.ChatService`
    pub const CHAT: &str = "switchboard.chat.v1.ChatService";
    /// `switchboard.hook.v1.HookService`
    pub const HOOK: &str = "switchboard.hook.v1.HookService";
}

pub use pbjson_types as wkt;
