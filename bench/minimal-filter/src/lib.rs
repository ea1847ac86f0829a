//! Reads one request header and writes the cluster header: the least any
//! routing filter does through proxy-wasm (one header read, one header write,
//! the context bookkeeping of the SDK), and so the floor graylane is measured
//! against.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(MinimalRoot));
}}

struct MinimalRoot;

impl Context for MinimalRoot {}

impl RootContext for MinimalRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(MinimalRequest))
    }
}

struct MinimalRequest;

impl Context for MinimalRequest {}

impl HttpContext for MinimalRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let cluster = match self.get_http_request_header("x-canary").as_deref() {
            Some("true") => "s0-canary",
            _ => "s0-stable",
        };
        self.set_http_request_header("x-graylane-cluster", Some(cluster));
        Action::Continue
    }
}
