//! Screenshots from the X server's framebuffer file (`Xvfb -fbdir`, an XWD image the server
//! keeps memory-mapped): header parsing, cropping, scaling and PNG encoding. No X connection.

use std::path::Path;

/// Why no screenshot could be taken from the framebuffer file.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The file could not be read.
    #[error("cannot read the framebuffer: {source}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not an XWD image sandboxd understands.
    #[error(
        "the framebuffer {path} is not a 24/32-bit ZPixmap XWD image ({what}); start Xvfb with -fbdir and a 24-bit screen"
    )]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// The requested region is not on the screen.
    #[error(
        "region {x},{y} {width}x{height} is not inside the {screen_w}x{screen_h} screen; pick a region within it"
    )]
    Region {
        /// Left edge.
        x: u32,
        /// Top edge.
        y: u32,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// Screen width.
        screen_w: u32,
        /// Screen height.
        screen_h: u32,
    },
    /// PNG encoding failed.
    #[error("PNG encoding failed: {0}")]
    Encode(String),
}

/// A part of the screen, in screen pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// A decoded frame: RGB, 3 bytes per pixel, rows top to bottom.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// RGB bytes.
    pub rgb: Vec<u8>,
}

/// Layout of the pixels in an XWD file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    width: u32,
    height: u32,
    bytes_per_line: usize,
    little_endian: bool,
    offset: usize,
}

fn parse_header(data: &[u8], path: &str) -> Result<Header, FrameError> {
    let bad = |what: String| FrameError::Format {
        path: path.to_string(),
        what,
    };
    let field = |i: usize| -> Result<u32, FrameError> {
        be_field(data, i)
            .ok_or_else(|| bad(format!("{} bytes is too short for a header", data.len())))
    };
    let header_size = field(0)? as usize;
    if field(1)? != 7 {
        return Err(bad(format!("version {}", field(1)?)));
    }
    if field(2)? != 2 {
        return Err(bad(format!("pixmap format {}", field(2)?)));
    }
    let (width, height) = (field(4)?, field(5)?);
    let little_endian = field(7)? == 0;
    let bits_per_pixel = field(11)?;
    if bits_per_pixel != 32 {
        return Err(bad(format!("{bits_per_pixel} bits per pixel")));
    }
    let bytes_per_line = field(12)? as usize;
    let (red, green, blue) = (field(14)?, field(15)?, field(16)?);
    if (red, green, blue) != (0xff0000, 0xff00, 0xff) {
        return Err(bad(format!("colour masks {red:#x}/{green:#x}/{blue:#x}")));
    }
    let ncolors = field(19)? as usize;
    let offset = header_size + ncolors * 12;
    let need = offset + bytes_per_line * height as usize;
    if data.len() < need || bytes_per_line < width as usize * 4 {
        return Err(bad(format!("{} bytes, {need} needed", data.len())));
    }
    Ok(Header {
        width,
        height,
        bytes_per_line,
        little_endian,
        offset,
    })
}

/// The screen size recorded in the framebuffer file (its header only is read).
pub fn screen_size(path: &Path) -> Result<(u32, u32), FrameError> {
    let name = path.display().to_string();
    let mut head = vec![0u8; 100];
    let read = fs_err::File::open(path).and_then(|mut f| {
        use std::io::Read;
        f.read_exact(&mut head)
    });
    read.map_err(|source| FrameError::Read {
        path: name.clone(),
        source,
    })?;
    let field = |i: usize| be_field(&head, i).unwrap_or(0);
    if field(1) != 7 {
        return Err(FrameError::Format {
            path: name,
            what: format!("version {}", field(1)),
        });
    }
    Ok((field(4), field(5)))
}

/// The `i`th big-endian 32-bit field of an XWD header.
fn be_field(data: &[u8], i: usize) -> Option<u32> {
    data.get(i * 4..i * 4 + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads the framebuffer and cuts out `region` (the whole screen without one).
pub fn capture(path: &Path, region: Option<Region>) -> Result<Frame, FrameError> {
    let name = path.display().to_string();
    let data = fs_err::read(path).map_err(|source| FrameError::Read {
        path: name.clone(),
        source,
    })?;
    let h = parse_header(&data, &name)?;
    let r = region.unwrap_or(Region {
        x: 0,
        y: 0,
        width: h.width,
        height: h.height,
    });
    let inside = r.width > 0
        && r.height > 0
        && u64::from(r.x) + u64::from(r.width) <= u64::from(h.width)
        && u64::from(r.y) + u64::from(r.height) <= u64::from(h.height);
    if !inside {
        return Err(FrameError::Region {
            x: r.x,
            y: r.y,
            width: r.width,
            height: r.height,
            screen_w: h.width,
            screen_h: h.height,
        });
    }
    let mut rgb = Vec::with_capacity(r.width as usize * r.height as usize * 3);
    for row in r.y..r.y + r.height {
        let start = h.offset + row as usize * h.bytes_per_line + r.x as usize * 4;
        for px in data[start..start + r.width as usize * 4].chunks_exact(4) {
            if h.little_endian {
                rgb.extend_from_slice(&[px[2], px[1], px[0]]);
            } else {
                rgb.extend_from_slice(&[px[1], px[2], px[3]]);
            }
        }
    }
    Ok(Frame {
        width: r.width,
        height: r.height,
        rgb,
    })
}

impl Frame {
    /// Scales by `factor` (0 < factor ≤ 1), averaging the source pixels under each new one.
    pub fn scale(self, factor: f64) -> Frame {
        if factor >= 1.0 {
            return self;
        }
        let width = ((f64::from(self.width) * factor).round() as u32).max(1);
        let height = ((f64::from(self.height) * factor).round() as u32).max(1);
        let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
        let span = |i: u32, out: u32, src: u32| {
            let a = (u64::from(i) * u64::from(src) / u64::from(out)) as u32;
            let b =
                ((u64::from(i + 1) * u64::from(src)).div_ceil(u64::from(out)) as u32).max(a + 1);
            (a, b.min(src))
        };
        for y in 0..height {
            let (y0, y1) = span(y, height, self.height);
            for x in 0..width {
                let (x0, x1) = span(x, width, self.width);
                let mut sum = [0u32; 3];
                for sy in y0..y1 {
                    let row = sy as usize * self.width as usize * 3;
                    for sx in x0..x1 {
                        let p = row + sx as usize * 3;
                        for (c, s) in sum.iter_mut().enumerate() {
                            *s += u32::from(self.rgb[p + c]);
                        }
                    }
                }
                let n = (y1 - y0) * (x1 - x0);
                rgb.extend(sum.iter().map(|s| (s / n) as u8));
            }
        }
        Frame { width, height, rgb }
    }

    /// Encodes as PNG (fast compression: screenshots are taken often and thrown away).
    pub fn png(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity(self.rgb.len() / 8);
        let mut enc = png::Encoder::new(&mut out, self.width, self.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        let mut writer = enc
            .write_header()
            .map_err(|e| FrameError::Encode(e.to_string()))?;
        writer
            .write_image_data(&self.rgb)
            .map_err(|e| FrameError::Encode(e.to_string()))?;
        writer
            .finish()
            .map_err(|e| FrameError::Encode(e.to_string()))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An XWD file as Xvfb writes it: `w`x`h`, little-endian BGRX, pixel (x, y) = (x, y, 7).
    fn xwd(w: u32, h: u32) -> Vec<u8> {
        let mut fields = [0u32; 25];
        fields[0] = 104; // header size: 25 fields + a 4-byte window name
        fields[1] = 7;
        fields[2] = 2;
        fields[3] = 24;
        fields[4] = w;
        fields[5] = h;
        fields[11] = 32;
        fields[12] = w * 4;
        fields[14] = 0xff0000;
        fields[15] = 0xff00;
        fields[16] = 0xff;
        fields[19] = 2;
        let mut data: Vec<u8> = fields.iter().flat_map(|f| f.to_be_bytes()).collect();
        data.extend_from_slice(b"scr\0");
        data.extend_from_slice(&[0u8; 24]); // two colormap entries
        for y in 0..h {
            for x in 0..w {
                data.extend_from_slice(&[7, y as u8, x as u8, 0]);
            }
        }
        data
    }

    #[test]
    fn crops_scales_and_encodes() {
        let dir = std::env::temp_dir().join(format!("fb-test-{}", std::process::id()));
        fs_err::create_dir_all(&dir).unwrap();
        let path = dir.join("Xvfb_screen0");
        fs_err::write(&path, xwd(8, 6)).unwrap();
        assert_eq!(screen_size(&path).unwrap(), (8, 6));
        let full = capture(&path, None).unwrap();
        assert_eq!((full.width, full.height), (8, 6));
        assert_eq!(&full.rgb[..6], &[0, 0, 7, 1, 0, 7]);
        let part = capture(
            &path,
            Some(Region {
                x: 2,
                y: 3,
                width: 2,
                height: 2,
            }),
        )
        .unwrap();
        assert_eq!(&part.rgb[..3], &[2, 3, 7]);
        let off = Region {
            x: 7,
            y: 0,
            width: 2,
            height: 1,
        };
        assert!(matches!(
            capture(&path, Some(off)),
            Err(FrameError::Region { .. })
        ));
        let half = full.scale(0.5);
        assert_eq!((half.width, half.height), (4, 3));
        assert_eq!(&half.rgb[..3], &[0, 0, 7]); // mean of x 0..2 (0, 1) and y 0..2 (0, 1)
        let png = half.png().unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        fs_err::remove_dir_all(&dir).unwrap();
    }
}
