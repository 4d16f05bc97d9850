use std::sync::atomic::{AtomicU64, Ordering};

/// A view of `len` 32-bit elements (f32 or u32) at byte `offset` in a storage buffer.
/// Parameters live in large arenas, so most tensors are views; activations own a buffer.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub buf: wgpu::Buffer,
    /// Byte offset; a multiple of the adapter's storage offset alignment (256).
    pub offset: u64,
    /// Number of 32-bit elements.
    pub len: usize,
    /// Identity of the underlying allocation, for caches keyed by buffer.
    pub id: u64,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Tensor {
    pub fn whole(buf: wgpu::Buffer, len: usize) -> Self {
        Tensor { buf, offset: 0, len, id: NEXT_ID.fetch_add(1, Ordering::Relaxed) }
    }

    /// A sub-view `[start, start + len)` in elements. `start * 4` must keep the binding
    /// offset aligned to 256 bytes, which the parameter arenas guarantee.
    pub fn view(&self, start: usize, len: usize) -> Tensor {
        assert!(start + len <= self.len, "view {start}+{len} out of {}", self.len);
        Tensor { buf: self.buf.clone(), offset: self.offset + start as u64 * 4, len, id: self.id }
    }

    pub fn bytes(&self) -> u64 {
        self.len as u64 * 4
    }

    pub(crate) fn binding(&self) -> wgpu::BindingResource<'_> {
        // A zero-sized binding is invalid; an empty tensor binds one element it never reads.
        let size = (self.len.max(1) as u64 * 4).min(self.buf.size() - self.offset);
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buf,
            offset: self.offset,
            size: wgpu::BufferSize::new(size),
        })
    }
}
