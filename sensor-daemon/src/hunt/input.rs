//! Opening an input: gzip undone, type told by content, handed to its
//! reader.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use super::packets::{self, PacketSettings};
use super::{HuntSettings, InputKind, Records, access_log, flows};

/// Why an input could not be read (on, or at all).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "not a PCAP/pcapng capture, Zeek conn.log, nfdump CSV/JSON or access log (by its first line)"
    )]
    Unknown,
    #[error(transparent)]
    Packets(#[from] packets::PacketError),
    #[error("{0}")]
    Json(String),
}

/// An input, open and typed.
pub struct Opened {
    pub kind: InputKind,
    /// gzip-compressed on disk (offsets are in the decompressed stream).
    pub gzip: bool,
    /// Bytes on disk.
    pub size: u64,
    reader: Box<dyn BufRead + Send>,
}

const BUFFER: usize = 1 << 20;

/// Opens `path` and tells its type.
pub fn open(path: &Path) -> Result<Opened, InputError> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut reader: Box<dyn BufRead + Send> = Box::new(BufReader::with_capacity(BUFFER, file));
    let mut gzip = false;
    if reader.fill_buf()?.starts_with(&[0x1f, 0x8b]) {
        gzip = true;
        reader = Box::new(BufReader::with_capacity(
            BUFFER,
            flate2::bufread::MultiGzDecoder::new(reader),
        ));
    }
    let kind = super::detect(reader.fill_buf()?).ok_or(InputError::Unknown)?;
    Ok(Opened {
        kind,
        gzip,
        size,
        reader,
    })
}

impl Opened {
    /// Reads every record into `out`. An error stops this input only
    /// (what was read before it counts).
    pub fn read(
        self,
        settings: &HuntSettings,
        out: &mut dyn Records,
        progress: &mut dyn FnMut(u64),
    ) -> Result<packets::PacketStats, InputError> {
        let Opened { kind, reader, .. } = self;
        match kind {
            InputKind::Pcap | InputKind::PcapNg => {
                let ps = PacketSettings {
                    idle_timeout_ns: settings.flow_idle_timeout.as_nanos() as u64,
                    max_flows: settings.max_flows,
                    netflow_ports: settings.netflow_ports.clone(),
                };
                packets::read(reader, &ps, out, progress).map_err(|(_, e)| InputError::Packets(e))
            }
            InputKind::ZeekTsv => flows::zeek_tsv(reader, out, progress)
                .map(|()| Default::default())
                .map_err(InputError::Io),
            InputKind::ZeekJson => flows::zeek_json(reader, out, progress)
                .map(|()| Default::default())
                .map_err(InputError::Io),
            InputKind::NfdumpCsv => flows::nfdump_csv(reader, out, progress)
                .map(|()| Default::default())
                .map_err(InputError::Io),
            InputKind::NfdumpJson => {
                flows::nfdump_json(Counting::new(reader, progress), out, &mut |_| {})
                    .map(|()| Default::default())
                    .map_err(InputError::Json)
            }
            InputKind::AccessLog => {
                access_log::read(reader, None, settings.forwarded_for, out, progress)
                    .map(|()| Default::default())
                    .map_err(InputError::Io)
            }
            InputKind::AccessLogJson => access_log::read(
                reader,
                Some(&settings.json_fields),
                settings.forwarded_for,
                out,
                progress,
            )
            .map(|()| Default::default())
            .map_err(InputError::Io),
        }
    }
}

/// A reader that reports the bytes read (for inputs parsed as one
/// document).
struct Counting<'p, R> {
    inner: R,
    read: u64,
    reported: u64,
    progress: &'p mut dyn FnMut(u64),
}

impl<'p, R> Counting<'p, R> {
    fn new(inner: R, progress: &'p mut dyn FnMut(u64)) -> Self {
        Counting {
            inner,
            read: 0,
            reported: 0,
            progress,
        }
    }
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if n == 0 || self.read - self.reported >= 4 << 20 {
            (self.progress)(self.read);
            self.reported = self.read;
        }
        Ok(n)
    }
}
