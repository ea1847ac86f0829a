//! Reads one request header and writes the cluster header: the least any
//! routing filter does through proxy-wasm (one header read, one header write),
//! and so the floor graylane is measured against.
//!
//! Built with the `sdk` feature (default) it goes through the Rust SDK like
//! graylane; without it, it uses the raw ABI and exports only what it needs.

#[cfg(feature = "sdk")]
mod sdk {
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
}

#[cfg(not(feature = "sdk"))]
mod raw {
    use std::ptr::null_mut;

    const REQUEST_HEADERS: u32 = 0;

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_header_map_value(
            map_type: u32,
            key: *const u8,
            key_size: usize,
            value: *mut *mut u8,
            value_size: *mut usize,
        ) -> u32;
        fn proxy_replace_header_map_value(
            map_type: u32,
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
    }

    #[no_mangle]
    pub extern "C" fn proxy_abi_version_0_2_1() {}

    #[no_mangle]
    pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
        let mut buffer = Vec::<u8>::with_capacity(size);
        let pointer = buffer.as_mut_ptr();
        std::mem::forget(buffer);
        pointer
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_context_create(_context_id: u32, _parent_id: u32) {}

    #[no_mangle]
    pub extern "C" fn proxy_on_vm_start(_root_id: u32, _size: usize) -> u32 {
        1
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_configure(_root_id: u32, _size: usize) -> u32 {
        1
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_done(_context_id: u32) -> u32 {
        1
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_delete(_context_id: u32) {}

    #[no_mangle]
    pub extern "C" fn proxy_on_request_headers(
        _context_id: u32,
        _headers: usize,
        _eos: u32,
    ) -> u32 {
        let key = b"x-canary";
        let mut data: *mut u8 = null_mut();
        let mut size = 0usize;
        // SAFETY: the host writes a buffer it got from proxy_on_memory_allocate.
        let canary = unsafe {
            proxy_get_header_map_value(
                REQUEST_HEADERS,
                key.as_ptr(),
                key.len(),
                &mut data,
                &mut size,
            ) == 0
                && !data.is_null()
                && Vec::from_raw_parts(data, size, size) == b"true"
        };
        let cluster: &[u8] = if canary { b"s0-canary" } else { b"s0-stable" };
        let name = b"x-graylane-cluster";
        // SAFETY: pointers and lengths of live slices.
        unsafe {
            proxy_replace_header_map_value(
                REQUEST_HEADERS,
                name.as_ptr(),
                name.len(),
                cluster.as_ptr(),
                cluster.len(),
            );
        }
        0 // Continue
    }
}
