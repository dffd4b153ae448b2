//! Request/response framing for libp2p: one length-prefixed byte frame each
//! way, refused before reading when it is over the protocol's limit. What the
//! bytes mean is `atoll_proto::wire`'s business.

use std::io;

use futures_util::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

#[derive(Debug, Clone, Copy)]
pub struct Frames {
    /// Largest request accepted or sent, in bytes.
    pub request: usize,
    /// Largest response accepted or sent, in bytes.
    pub response: usize,
}

/// One frame's limit.
struct Limit {
    max: usize,
}

impl Limit {
    async fn read<T: AsyncRead + Unpin + Send>(&self, io: &mut T) -> io::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        io.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > self.max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame of {len} bytes is over the {}-byte limit", self.max),
            ));
        }
        let mut buf = vec![0u8; len];
        io.read_exact(&mut buf).await?;
        Ok(buf)
    }

    async fn write<T: AsyncWrite + Unpin + Send>(&self, io: &mut T, bytes: Vec<u8>) -> io::Result<()> {
        if bytes.len() > self.max {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "frame over the limit"));
        }
        io.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
        io.write_all(&bytes).await?;
        io.close().await
    }
}

impl libp2p::request_response::Codec for Frames {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        Limit { max: self.request }.read(io).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        Limit { max: self.response }.read(io).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        Limit { max: self.request }.write(io, req).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()> {
        Limit { max: self.response }.write(io, res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::io::Cursor;

    #[tokio::test]
    async fn frames_roundtrip_and_refuse_oversized() {
        let f = Limit { max: 8 };
        let mut buf = Cursor::new(Vec::new());
        f.write(&mut buf, b"hello".to_vec()).await.unwrap();
        buf.set_position(0);
        assert_eq!(f.read(&mut buf).await.unwrap(), b"hello");
        // A length prefix over the limit is refused without allocating it.
        let mut big = Cursor::new(u32::MAX.to_be_bytes().to_vec());
        assert_eq!(f.read(&mut big).await.unwrap_err().kind(), io::ErrorKind::InvalidData);
        // A truncated frame is an error, not a hang.
        let mut short = Cursor::new(vec![0, 0, 0, 5, b'h']);
        assert!(f.read(&mut short).await.is_err());
        assert!(f.write(&mut Cursor::new(Vec::new()), vec![0; 9]).await.is_err());
    }
}
