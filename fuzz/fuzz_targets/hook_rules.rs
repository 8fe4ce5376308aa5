//! The hook-runner rule loader: any bytes as a rules file load or fail, never
//! panic; a failure names the file in every error; a load gives rules with unique,
//! non-empty names, sorted.
#![no_main]

use std::path::{Path, PathBuf};

use hook_runner::rules::load_files;
use hook_runner::template::DEFAULT_FUEL;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else { return };
    let files = [(PathBuf::from("rules/f.yaml"), text.to_owned())];
    match load_files(Path::new("rules"), &files, DEFAULT_FUEL) {
        Ok(set) => {
            let names: Vec<&str> = set.rules.iter().map(|r| r.name.as_str()).collect();
            assert!(names.iter().all(|n| !n.is_empty()), "{names:?}");
            assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted and unique: {names:?}");
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            for error in errors {
                let text = error.to_string();
                assert!(text.starts_with("rules/f.yaml"), "{text}");
            }
        }
    }
});
