//! H.264 access units as the recorder writes them: AVCC (4-byte length-prefixed NAL units,
//! what the `rtc` stack's RFC 6184 depacketizer emits with `is_avc`), the facts the
//! MP4 writer needs from them (keyframe, parameter sets) and the picture size read from
//! the sequence parameter set (ITU-T H.264 §7.3.2.1.1).

/// NAL unit type of an IDR slice (a keyframe).
const NAL_IDR: u8 = 5;
/// NAL unit type of a sequence parameter set.
pub const NAL_SPS: u8 = 7;
/// NAL unit type of a picture parameter set.
pub const NAL_PPS: u8 = 8;

/// The NAL units of an AVCC access unit (without their length prefixes); stops at the first
/// length that runs past the end.
pub fn nal_units(avcc: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = avcc;
    std::iter::from_fn(move || {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        if len == 0 || len > tail.len() {
            rest = &[];
            return None;
        }
        let (nal, next) = tail.split_at(len);
        rest = next;
        Some(nal)
    })
}

/// The type of a NAL unit (low 5 bits of its header byte).
pub fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| b & 0x1f)
}

/// Whether the access unit holds an IDR slice (decodable on its own).
pub fn is_keyframe(avcc: &[u8]) -> bool {
    nal_units(avcc).any(|n| nal_type(n) == NAL_IDR)
}

/// The first NAL unit of `kind` in the access unit.
pub fn find(avcc: &[u8], kind: u8) -> Option<&[u8]> {
    nal_units(avcc).find(|n| nal_type(n) == kind)
}

/// Bits of a NAL unit's payload, emulation-prevention bytes (00 00 03) removed.
struct Bits {
    data: Vec<u8>,
    pos: usize,
}

impl Bits {
    fn new(nal: &[u8]) -> Self {
        let mut data = Vec::with_capacity(nal.len());
        let mut zeros = 0;
        for &b in nal {
            if zeros >= 2 && b == 3 {
                zeros = 0;
                continue;
            }
            zeros = if b == 0 { zeros + 1 } else { 0 };
            data.push(b);
        }
        Self { data, pos: 0 }
    }

    fn bit(&mut self) -> Option<u32> {
        let byte = *self.data.get(self.pos / 8)?;
        let bit = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(u32::from(bit))
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        (0..n).try_fold(0, |acc, _| Some((acc << 1) | self.bit()?))
    }

    /// Unsigned Exp-Golomb (ue(v)).
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some((1u32 << zeros) - 1 + self.bits(zeros)?)
    }

    /// Signed Exp-Golomb (se(v)).
    fn se(&mut self) -> Option<i32> {
        let k = i64::from(self.ue()?);
        let v = if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) };
        i32::try_from(v).ok()
    }
}

/// Width and height in pixels (after cropping) of a sequence parameter set NAL unit.
pub fn sps_size(sps: &[u8]) -> Option<(u16, u16)> {
    if nal_type(sps) != NAL_SPS {
        return None;
    }
    let mut b = Bits::new(sps.get(1..)?);
    let profile_idc = b.bits(8)?;
    b.bits(16)?; // constraint flags, level_idc
    b.ue()?; // seq_parameter_set_id
    let mut chroma_format_idc = 1;
    let mut separate_colour_plane = false;
    if matches!(profile_idc, 100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135) {
        chroma_format_idc = b.ue()?;
        if chroma_format_idc == 3 {
            separate_colour_plane = b.bit()? == 1;
        }
        b.ue()?; // bit_depth_luma_minus8
        b.ue()?; // bit_depth_chroma_minus8
        b.bit()?; // qpprime_y_zero_transform_bypass_flag
        if b.bit()? == 1 {
            // seq_scaling_matrix_present_flag: skip the scaling lists.
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if b.bit()? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i32, 8i32);
                    for _ in 0..size {
                        if next != 0 {
                            next = (last + b.se()? + 256) % 256;
                        }
                        last = if next == 0 { last } else { next };
                    }
                }
            }
        }
    }
    b.ue()?; // log2_max_frame_num_minus4
    match b.ue()? {
        0 => {
            b.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            b.bit()?; // delta_pic_order_always_zero_flag
            b.se()?; // offset_for_non_ref_pic
            b.se()?; // offset_for_top_to_bottom_field
            for _ in 0..b.ue()?.min(255) {
                b.se()?;
            }
        }
        _ => {}
    }
    b.ue()?; // max_num_ref_frames
    b.bit()?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = b.ue()? + 1;
    let height_map_units = b.ue()? + 1;
    let frame_mbs_only = b.bit()?;
    if frame_mbs_only == 0 {
        b.bit()?; // mb_adaptive_frame_field_flag
    }
    b.bit()?; // direct_8x8_inference_flag
    let (mut left, mut right, mut top, mut bottom) = (0, 0, 0, 0);
    if b.bit()? == 1 {
        (left, right, top, bottom) = (b.ue()?, b.ue()?, b.ue()?, b.ue()?);
    }
    // Crop units (Table 6-1): 4:2:0 halves both, 4:2:2 the width, 4:4:4 and monochrome neither.
    let (sub_w, sub_h) = match (chroma_format_idc, separate_colour_plane) {
        (1, _) => (2, 2),
        (2, _) => (2, 1),
        _ => (1, 1),
    };
    let frame_factor = 2 - frame_mbs_only;
    let width = (width_mbs * 16).checked_sub(sub_w * (left + right))?;
    let height = (height_map_units * 16 * frame_factor).checked_sub(sub_h * frame_factor * (top + bottom))?;
    Some((u16::try_from(width).ok()?, u16::try_from(height).ok()?)).filter(|&(w, h)| w > 0 && h > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0)).collect()
    }

    /// x264 (ffmpeg 5.1), `-profile:v baseline`, 320x180: 180 is not a multiple of 16, so cropped.
    const BASELINE_320X180: &str = "6742c00dd901419f9f0110000003001000000303c0f142a480";
    /// x264, `-profile:v high`, 1280x720 (chroma_format_idc and the rest of the high-profile fields).
    const HIGH_1280X720: &str = "6764001facd9405005bb0110000003001000000303c0f1831960";

    #[test]
    fn sps_size_reads_cropped_baseline_and_high_profile() {
        assert_eq!(sps_size(&hex(BASELINE_320X180)), Some((320, 180)));
        assert_eq!(sps_size(&hex(HIGH_1280X720)), Some((1280, 720)));
    }

    #[test]
    fn sps_size_rejects_other_nal_units_and_truncated_ones() {
        assert_eq!(sps_size(&hex("68cb83cb20")), None);
        let sps = hex(BASELINE_320X180);
        assert_eq!(sps_size(&sps[..6]), None);
        assert_eq!(sps_size(&[]), None);
    }

    fn avcc(nals: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for n in nals {
            out.extend_from_slice(&u32::try_from(n.len()).unwrap_or(0).to_be_bytes());
            out.extend_from_slice(n);
        }
        out
    }

    #[test]
    fn access_units_split_into_nal_units() {
        let sps = hex(BASELINE_320X180);
        let au = avcc(&[&sps, &[0x68, 1, 2], &[0x65, 9, 9, 9]]);
        let types: Vec<u8> = nal_units(&au).map(nal_type).collect();
        assert_eq!(types, vec![7, 8, 5]);
        assert!(is_keyframe(&au));
        assert_eq!(find(&au, NAL_SPS), Some(&sps[..]));
        assert_eq!(find(&au, NAL_PPS), Some(&[0x68, 1, 2][..]));
        assert!(!is_keyframe(&avcc(&[&[0x41, 1, 2]])));
        // A length past the end stops the walk instead of reading out of bounds.
        let mut bad = avcc(&[&[0x41, 1]]);
        bad.extend_from_slice(&[0, 0, 0, 50, 0x65]);
        assert_eq!(nal_units(&bad).count(), 1);
        assert!(!is_keyframe(&bad));
    }
}
