use super::{Encoder, Gpu, Tensor};

use crate::error::{Error, Result};

impl Gpu {
    /// Copy a tensor back to the host. Async everywhere: in the browser the map callback
    /// fires from the event loop, natively we poll the device until it has.
    pub async fn read_f32(&self, t: &Tensor) -> Result<Vec<f32>> {
        let bytes = self.read_bytes(t).await?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }

    pub async fn read_u32(&self, t: &Tensor) -> Result<Vec<u32>> {
        let bytes = self.read_bytes(t).await?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }

    async fn read_bytes(&self, t: &Tensor) -> Result<Vec<u8>> {
        if t.len == 0 {
            return Ok(Vec::new());
        }
        let staging = self.staging_buffer(t.bytes());
        self.read_via(t, &staging).await
    }

    fn staging_buffer(&self, bytes: u64) -> wgpu::Buffer {
        self.counters.buffer(bytes.max(4));
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Copy `t` into the start of `staging` (at least `t.bytes()` long), map it, read it.
    async fn read_via(&self, t: &Tensor, staging: &wgpu::Buffer) -> Result<Vec<u8>> {
        let n = t.bytes();
        super::Counters::add(&self.counters.readbacks, 1);
        {
            let mut enc = Encoder::new(self);
            enc.copy_to_staging(t, staging);
            enc.submit();
        }
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.slice(..n).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU failed: {e}")))?;
        rx.await
            .map_err(|_| Error::Gpu("readback was cancelled (device lost?)".into()))?
            .map_err(|e| Error::Gpu(format!("readback failed: {e}")))?;
        let data = staging
            .slice(..n)
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("readback mapping failed: {e}")))?
            .to_vec();
        staging.unmap();
        Ok(data)
    }
}

/// A host-mappable buffer kept for repeated readbacks of the same size (a decoder reads the
/// logits after every token): no allocation per read.
pub struct ReadBuffer {
    buf: wgpu::Buffer,
    cap: u64,
}

impl ReadBuffer {
    /// Room for `len` 32-bit elements.
    pub fn new(gpu: &Gpu, len: usize) -> ReadBuffer {
        let cap = (len.max(1) as u64 * 4).next_multiple_of(4);
        ReadBuffer { buf: gpu.staging_buffer(cap), cap }
    }

    pub async fn read_f32(&self, gpu: &Gpu, t: &Tensor) -> Result<Vec<f32>> {
        assert!(t.bytes() <= self.cap, "readback of {} bytes into a {}-byte buffer", t.bytes(), self.cap);
        if t.len == 0 {
            return Ok(Vec::new());
        }
        let bytes = gpu.read_via(t, &self.buf).await?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }
}
