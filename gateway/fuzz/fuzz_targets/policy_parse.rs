//! Policy documents (`policy_file`, YAML or JSON) through `Policy::parse`: validation and
//! compilation must refuse bad documents with an error, never panic. A document that compiles
//! is then applied to a gateway's policy store and evaluated on every span of a fixed request,
//! as the gateway would after a reload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_policy::Policy;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let Ok(policy) = Policy::parse(text) else {
        return;
    };
    weir_fuzz::evaluate_policy(policy);
});
