//! The gateway's configuration file: any text is refused with an error or
//! resolved; never a panic.
#![no_main]
use idem_gateway::cli::GatewayArgs;
use idem_gateway::gateway::GatewayConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let args = GatewayArgs {
            upstream: Some("http://127.0.0.1:3000".into()),
            ..GatewayArgs::default()
        };
        if let Ok(config) = GatewayConfig::from_toml(text, &args) {
            let _ = config.summary();
        }
    }
});
