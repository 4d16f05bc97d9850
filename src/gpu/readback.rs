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
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: t.bytes(),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut enc = Encoder::new(self);
            enc.copy_to_staging(t, &staging);
            enc.submit();
        }
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
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
            .slice(..)
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("readback mapping failed: {e}")))?
            .to_vec();
        staging.unmap();
        Ok(data)
    }
}
