import { describe, expect, it } from 'vitest';
import { maskPhonesInText } from './logger.js';

describe('maskPhonesInText', () => {
  it('masks numbers as people type them, in E.164 and national forms', () => {
    expect(maskPhonesInText('call +79161234567 now')).not.toContain('1234567');
    expect(maskPhonesInText('tel 8 (916) 123-45-67.')).not.toMatch(/123.?45.?67/);
  });

  it('leaves a card alone: a count at the end of a line and a time on the next are not a phone', () => {
    const card = 'State: confirmed · Calls: 1\n\n04.12 04:40 received → dial_pending\n04.12 04:41 dial_pending → calling';
    expect(maskPhonesInText(card)).toBe(card);
  });
});
