import { describe, expect, it } from 'vitest';
import { smsSegments } from './sms-segments.js';
import {
  DEFAULT_MAX_SMS_SEGMENTS,
  DEFAULT_SMS_TEMPLATES,
  renderSms,
  SMS_PLACEHOLDER_MAX_UNITS,
  validateTemplates,
  type SmsLang,
} from './sms-templates.js';

const KINDS = ['night', 'confirmation', 'voicemail'] as const;
const LANGS: SmsLang[] = ['ru', 'en'];

describe('renderSms', () => {
  it('fills the placeholders', () => {
    expect(renderSms('night', 'ru', { name: 'Анна', shop: 'Часы.ру', promotion: 'Скидка 5% по коду NIGHT' })).toBe(
      'Здравствуйте, Анна! Часы.ру: заказ получен, позвоним вам утром. Скидка 5% по коду NIGHT',
    );
    expect(renderSms('confirmation', 'en', { name: 'Ann', shop: 'WatchShop' })).toBe(
      'Thank you Ann! WatchShop has confirmed your order.',
    );
  });

  it('drops optional parts whose placeholder is empty', () => {
    expect(renderSms('night', 'ru', { name: '  ', shop: 'Часы.ру', promotion: null })).toBe(
      'Здравствуйте! Часы.ру: заказ получен, позвоним вам утром.',
    );
    expect(renderSms('voicemail', 'ru', { shop: 'Часы.ру' })).toBe(
      'Часы.ру: не дозвонились до вас по заказу. Менеджер свяжется с вами.',
    );
  });

  it('cleans and caps values (word boundary first)', () => {
    const text = renderSms('confirmation', 'en', { name: 'Konstantin\n\tKonstantinopolsky Jr', shop: 'Shop' });
    expect(text).toBe('Thank you Konstantin! Shop has confirmed your order.');
    const long = renderSms('confirmation', 'en', { name: 'X'.repeat(50), shop: 'Shop' });
    expect(long).toContain('X'.repeat(SMS_PLACEHOLDER_MAX_UNITS.name) + '!');
    expect(renderSms('confirmation', 'en', { name: '😀'.repeat(15), shop: 'S' })).toContain('😀'.repeat(10) + '!');
  });

  it('uses an override for its kind only', () => {
    const overrides = { night: '{shop}: we are closed[, {name}]. Call you at 9.' };
    expect(renderSms('night', 'en', { name: 'Ann', shop: 'Shop' }, overrides)).toBe('Shop: we are closed, Ann. Call you at 9.');
    expect(renderSms('confirmation', 'en', { name: 'Ann', shop: 'Shop' }, overrides)).toBe(
      'Thank you Ann! Shop has confirmed your order.',
    );
  });

  it('no rendered default ever exceeds the default segment limit', () => {
    const worst = { name: 'Ж'.repeat(200), shop: 'Ж'.repeat(200), promotion: 'Ж'.repeat(200) };
    for (const lang of LANGS) {
      for (const kind of KINDS) {
        expect(smsSegments(renderSms(kind, lang, worst))).toBeLessThanOrEqual(DEFAULT_MAX_SMS_SEGMENTS);
      }
    }
  });
});

describe('validateTemplates', () => {
  it('accepts the defaults at two segments with unknown shop and promotion', () => {
    expect(DEFAULT_MAX_SMS_SEGMENTS).toBe(2);
    for (const lang of LANGS) expect(() => validateTemplates(DEFAULT_SMS_TEMPLATES[lang])).not.toThrow();
  });

  it('throws a clear error for a template too long in the worst case', () => {
    const night = 'Добрый вечер[, {name}]! Магазин {shop} уже закрыт, но мы получили ваш заказ и обязательно перезвоним вам завтра утром.[ {promotion}]';
    expect(() => validateTemplates({ night }, 2)).toThrow(
      /SMS template "night" takes 3 segments in the worst case .* the limit is 2: shorten it by \d+ characters/,
    );
    expect(() => validateTemplates({ night }, 3)).not.toThrow();
  });

  it('uses the configured shop and promotion when given', () => {
    const t = { confirmation: 'Спасибо[, {name}]! Заказ в {shop} подтверждён, менеджер обязательно скоро позвонит вам.[ {promotion}]' };
    expect(() => validateTemplates(t, 2)).toThrow(/"confirmation"/);
    expect(() => validateTemplates(t, 2, { shop: 'Часы', promotion: '' })).not.toThrow();
    expect(() => validateTemplates(t, 2, { shop: 'Ж'.repeat(21) })).toThrow(/\{shop\} .* at most 20/);
  });

  it('rejects syntax errors', () => {
    expect(() => validateTemplates({ night: 'Hi {nmae}' })).toThrow(/unknown placeholder \{nmae\}/);
    expect(() => validateTemplates({ night: 'Hi [{name}' })).toThrow(/never closed/);
    expect(() => validateTemplates({ night: 'Hi {name}]' })).toThrow(/without '\['/);
    expect(() => validateTemplates({ night: 'Hi [there]' })).toThrow(/no placeholder/);
    expect(() => validateTemplates({ night: 'Hi {name' })).toThrow(/unbalanced/);
    expect(() => validateTemplates({ night: '  ' })).toThrow(/empty/);
    expect(() => validateTemplates({}, 0)).toThrow(/positive integer/);
  });
});
